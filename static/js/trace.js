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
    highlight(event.target);
  });

  // A search from the runs list (?q=): its words are marked in the span or model
  // call the panel shows. Text nodes are split and wrapped; no markup is parsed.
  function searchWords() {
    const note = document.querySelector("[data-search-text]");
    if (!note) return [];
    return note.dataset.searchText.split(/[^\p{L}\p{N}_]+/u).filter((w) => w.length > 0);
  }

  function highlight(root) {
    const words = searchWords();
    if (!words.length) return;
    const escaped = words.map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
    const pattern = new RegExp("(" + escaped.join("|") + ")", "giu");
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    const nodes = [];
    while (walker.nextNode()) {
      const node = walker.currentNode;
      if (node.parentElement && node.parentElement.closest("mark, script, style")) continue;
      pattern.lastIndex = 0;
      if (pattern.test(node.nodeValue)) nodes.push(node);
    }
    nodes.slice(0, 500).forEach(function (node) {
      const parts = node.nodeValue.split(pattern);
      const fragment = document.createDocumentFragment();
      parts.forEach(function (part, index) {
        if (!part) return;
        if (index % 2 === 1) {
          const mark = document.createElement("mark");
          mark.className = "search-hit";
          mark.textContent = part;
          fragment.appendChild(mark);
        } else {
          fragment.appendChild(document.createTextNode(part));
        }
      });
      node.parentNode.replaceChild(fragment, node);
    });
  }

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
