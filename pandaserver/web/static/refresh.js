// panda-daemon fleet pages: refresh the page's content every data-refresh seconds,
// in place (the scroll position and open <details> stay), and not while the tab is hidden.
(function () {
  "use strict";
  var seconds = parseFloat(document.body.getAttribute("data-refresh")) || 15;
  var state = document.getElementById("refresh-state");

  function say(text) {
    state = document.getElementById("refresh-state");
    if (state) { state.textContent = text; }
  }

  function openDetails() {
    var open = [];
    document.querySelectorAll("details[open]").forEach(function (d, i) {
      var row = d.closest("[data-run-id]");
      open.push(row ? row.getAttribute("data-run-id") : "#" + i);
    });
    return open;
  }

  function reopen(open) {
    open.forEach(function (id) {
      var row = document.querySelector('[data-run-id="' + id + '"] details');
      if (row) { row.open = true; }
    });
  }

  function refresh() {
    if (document.hidden) { return; }
    fetch(window.location.href, { cache: "no-store", credentials: "same-origin" })
      .then(function (response) {
        return response.text().then(function (text) { return [response.status, text]; });
      })
      .then(function (result) {
        var doc = new DOMParser().parseFromString(result[1], "text/html");
        var fresh = doc.getElementById("content");
        var current = document.getElementById("content");
        if (!fresh || !current) { throw new Error("unexpected page"); }
        var open = openDetails();
        current.replaceWith(fresh);
        reopen(open);
        if (result[0] !== 200) { say("last refresh: HTTP " + result[0]); }
        document.body.setAttribute("data-refreshed", new Date().toISOString());
      })
      .catch(function (err) {
        say("refresh failed (" + err.message + "), retrying every " + seconds + " s");
      });
  }

  window.setInterval(refresh, seconds * 1000);
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) { refresh(); }
  });
}());
