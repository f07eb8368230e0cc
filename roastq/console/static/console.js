// The console's only script: live regions refresh in place, and "select all" boxes.
// An element with data-live="URL" is replaced every few seconds by the page's live part, fetched
// with X-Console-Partial: 1 (no full reload, so no flicker). It stops when the new content says
// data-live-stop (a job that has finished), and pauses while the tab is hidden.
(function () {
  "use strict";
  var PERIOD_MS = 3000;

  function refresh(el) {
    if (document.hidden) { return schedule(el); }
    fetch(el.dataset.live, {headers: {"X-Console-Partial": "1"}, credentials: "same-origin"})
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.text(); })
      .then(function (html) {
        if (html !== el.dataset.lastHtml) { el.innerHTML = html; el.dataset.lastHtml = html; }
        el.dataset.refreshed = String(Date.now());
        if (!el.querySelector("[data-live-stop]")) { schedule(el); }
      })
      .catch(function () { schedule(el); });
  }

  function schedule(el) { setTimeout(function () { refresh(el); }, PERIOD_MS); }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(function (el) {
      if (!el.querySelector("[data-live-stop]")) { schedule(el); }
    });
    document.querySelectorAll("[data-select-all]").forEach(function (box) {
      box.addEventListener("change", function () {
        box.form.querySelectorAll("input[type=checkbox][name='" + box.dataset.selectAll + "']")
          .forEach(function (b) { b.checked = box.checked; });
      });
    });
  });
})();
