// Compare page and runs list: expand or collapse every differing call; pick two runs to compare.
(function () {
  "use strict";

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-expand], [data-collapse]");
    if (!button) return;
    var scope = document.querySelector(button.dataset.expand || button.dataset.collapse);
    if (!scope) return;
    var open = button.hasAttribute("data-expand");
    scope.querySelectorAll("details").forEach(function (d) { d.open = open; });
  });

  // The runs list: tick two runs, then Compare (the checkboxes belong to the
  // compare form, so this works without JavaScript too). Live updates swap rows
  // in, so the picks are kept here and put back after every swap.
  var picked = [];

  function bar() { return document.querySelector("[data-compare-bar]"); }

  function sync() {
    var boxes = document.querySelectorAll("input[data-compare-pick]");
    boxes.forEach(function (box) {
      box.checked = picked.indexOf(box.value) !== -1;
      box.disabled = !box.checked && picked.length >= 2;
    });
    var el = bar();
    if (!el) return;
    var count = el.querySelector("[data-compare-count]");
    var button = el.querySelector("button");
    if (count) count.textContent = picked.length === 2 ? "2 runs picked" : "Tick two runs to compare them (" + picked.length + " of 2)";
    if (button) button.disabled = picked.length !== 2;
  }

  document.addEventListener("change", function (event) {
    var box = event.target.closest("input[data-compare-pick]");
    if (!box) return;
    var at = picked.indexOf(box.value);
    if (box.checked && at === -1) picked.push(box.value);
    if (!box.checked && at !== -1) picked.splice(at, 1);
    sync();
  });

  document.addEventListener("htmx:afterSwap", sync);
  document.addEventListener("htmx:oobAfterSwap", sync);
  document.addEventListener("htmx:wsAfterMessage", sync);
  document.addEventListener("DOMContentLoaded", sync);
})();
