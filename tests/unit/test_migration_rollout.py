"""Every migration says whether older code keeps working on it (expand) or not (contract),
and the oldest code that works with a revision follows from what they say
(docs/database.md, "Rolling upgrades"). Reads the migration files only: no database."""

from __future__ import annotations

import pytest

from pandaserver.db.base import schema
from pandaserver.db.base.schema import (
    CONTRACT,
    EXPAND,
    head_revision,
    known_revisions,
    oldest_code_for,
    steps,
)


def test_every_migration_declares_expand_or_contract() -> None:
    undeclared = [revision for revision in known_revisions()
                  if getattr(schema._scripts().get_revision(revision).module, "compatibility",
                             None) not in (EXPAND, CONTRACT)]
    assert not undeclared, (
        f"migrations {undeclared} do not declare `compatibility = \"expand\"` (older code keeps"
        " working: additive only) or `\"contract\"` (removes or changes what older code uses);"
        " add one (docs/database.md, \"Rolling upgrades\"); undeclared counts as contract, which"
        " stops every older server at its next restart")


def test_steps_run_oldest_first_from_after_before() -> None:
    chain = [step.revision for step in steps(head_revision(), None)]
    assert chain == known_revisions()[::-1]
    assert [step.revision for step in steps(head_revision(), chain[-2])] == [chain[-1]]
    assert all(step.summary for step in steps(head_revision(), None))


def test_the_oldest_code_is_the_newest_contract_step_or_what_it_names(
        monkeypatch: pytest.MonkeyPatch) -> None:
    chain = known_revisions()[::-1]
    assert len(chain) >= 3, "this test needs three revisions or more"
    assert all(schema.compatibility(rev) == EXPAND for rev in chain)  # as declared today
    assert oldest_code_for(head_revision()) == chain[0]  # all additive: since the first
    contract, later = chain[1], chain[2]
    monkeypatch.setattr(schema, "compatibility",
                        lambda rev: CONTRACT if rev == contract else EXPAND)
    assert oldest_code_for(chain[0]) == chain[0]
    assert oldest_code_for(contract) == contract
    assert oldest_code_for(head_revision()) == contract  # expand steps after it keep it
    # a contract step shipped after the release whose code stopped using what it removes
    module = schema._scripts().get_revision(contract).module
    monkeypatch.setattr(module, "oldest_code", chain[0], raising=False)
    assert oldest_code_for(later) == chain[0]


def test_an_undeclared_migration_counts_as_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    module = schema._scripts().get_revision(head_revision()).module
    monkeypatch.delattr(module, "compatibility")
    assert schema.compatibility(head_revision()) == CONTRACT
    assert oldest_code_for(head_revision()) == head_revision()
