"""What is checked before a master runs: the configuration, the database settings, the script imports."""
