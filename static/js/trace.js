/* Loomview trace tree: live updates swap the whole #run-trace section in, so
 * the nodes the user folded, the selected span and the scroll position are
 * kept here, keyed by span id, and put back after every swap. */
(function () {
  "use strict";

  const folded = new Set(); // span ids of nodes the user closed (all start open)
  let selected = null; // span id shown in the side panel
  let scrollTop = 0;

  function rowOf(spanId) {
    return document.querySelector('#run-trace .span-row[data-span="' + CSS.escape(spanId) + '"]');
  }

  function restore() {
    const tree = document.querySelector("#run-trace .tree");
    if (!tree) return;
    geometry(tree);
    folded.forEach(function (spanId) {
      const row = rowOf(spanId);
      const node = row && row.closest("details.node");
      if (node && node.open) node.open = false;
    });
    tree.querySelectorAll(".span-row.selected").forEach((r) => r.classList.remove("selected"));
    const row = selected && rowOf(selected);
    if (row) {
      row.classList.add("selected");
      row.setAttribute("aria-current", "true");
    }
    if (tree.scrollTop !== scrollTop) tree.scrollTop = scrollTop;
  }

  // Every open/close, by the user or by restore(): the node's state now is what counts.
  document.addEventListener("toggle", function (event) {
    const node = event.target;
    if (!(node instanceof HTMLDetailsElement) || !node.classList.contains("node")) return;
    const row = node.querySelector(":scope > summary > .span-row");
    if (!row) return;
    if (node.open) folded.delete(row.dataset.span);
    else folded.add(row.dataset.span);
  }, true);

  document.addEventListener("scroll", function (event) {
    if (event.target instanceof Element && event.target.matches("#run-trace .tree")) {
      scrollTop = event.target.scrollTop;
    }
  }, true);

  // A span opened from the tree or the timeline: the panel says which.
  document.addEventListener("htmx:afterSwap", function (event) {
    if (!(event.target instanceof Element) || event.target.id !== "span-panel") return;
    const detail = event.target.querySelector("[data-span-detail]");
    selected = detail ? detail.dataset.spanDetail : null;
    restore();
  });

  // The tree's geometry rides in data attributes, not inline styles, which the
  // Content-Security-Policy refuses: indentation and duration bars are set here.
  function geometry(root) {
    root.querySelectorAll("[data-depth]").forEach(function (node) {
      node.style.setProperty("--depth", node.dataset.depth);
    });
    root.querySelectorAll(".dbar i[data-left]").forEach(function (bar) {
      bar.style.left = bar.dataset.left + "%";
      bar.style.width = bar.dataset.width + "%";
    });
  }

  document.addEventListener("DOMContentLoaded", function () { geometry(document); });
  document.addEventListener("htmx:load", function (event) {
    if (event.target instanceof Element) geometry(event.target);
  });

  document.addEventListener("htmx:wsAfterMessage", restore);
  document.addEventListener("htmx:oobAfterSwap", restore);
})();
