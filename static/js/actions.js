// The run page's Actions card: tabs, payload examples, and a refresh when the run's status changes.
(function () {
  "use strict";

  function showTab(card, name) {
    card.querySelectorAll("[data-tab]").forEach(function (tab) {
      tab.setAttribute("aria-selected", String(tab.dataset.tab === name));
    });
    card.querySelectorAll("[data-pane]").forEach(function (pane) {
      pane.hidden = pane.dataset.pane !== name;
    });
  }

  document.addEventListener("click", function (event) {
    var tab = event.target.closest(".actions-card [data-tab]");
    if (!tab) return;
    event.preventDefault();
    showTab(tab.closest(".actions-card"), tab.dataset.tab);
  });

  // Choosing another handler fills in its example payload, unless the user edited the box.
  document.addEventListener("change", function (event) {
    var select = event.target.closest("select[data-example-for]");
    if (!select) return;
    var box = document.getElementById(select.dataset.exampleFor);
    if (!box) return;
    var examples = Array.prototype.map.call(select.options, function (o) { return o.dataset.example || ""; });
    if (box.value.trim() === "" || examples.indexOf(box.value) !== -1) {
      box.value = select.selectedOptions[0].dataset.example || "";
    }
  });

  // The live page swaps the header in over the websocket; when the run's status
  // changes (finished, cancelled, reset), the actions that make sense change too.
  function refreshIfStatusChanged() {
    var card = document.getElementById("run-actions");
    var status = document.querySelector("#run-header [data-status]");
    if (!card || !status || !card.dataset.runStatus) return;
    if (card.dataset.runStatus === status.dataset.status) return;
    card.dataset.runStatus = status.dataset.status;
    var active = card.querySelector('[data-tab][aria-selected="true"]');
    var url = card.dataset.actionsUrl + (active ? "?tab=" + encodeURIComponent(active.dataset.tab) : "");
    window.htmx.ajax("GET", url, { target: "#run-actions", swap: "outerHTML" });
    // "Right now" is about an open run; its pending list stops polling by itself.
    var now = document.getElementById("run-now");
    if (now && status.dataset.status !== "RUNNING") now.hidden = true;
  }

  document.addEventListener("htmx:oobAfterSwap", refreshIfStatusChanged);
  document.addEventListener("htmx:afterSettle", refreshIfStatusChanged);
})();
