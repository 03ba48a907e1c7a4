/* Loomview run timeline: a Gantt chart of model-call attempts, tools, handoffs,
 * signals and updates, in plain SVG. Data comes from a json_script element
 * (times in ms from the run's start). Only what is inside the visible window is
 * drawn, and bars narrower than a pixel are merged per lane, so a run with
 * thousands of attempts stays fast. All text goes through textContent. */
(function () {
  "use strict";

  const SVG = "http://www.w3.org/2000/svg";
  const LANE_H = 30;
  const AXIS_H = 24;
  const LABEL_W = 150;
  const MARK_H = 14;
  const views = {}; // zoom window per chart, kept across live re-renders

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG, name);
    for (const key in attrs) node.setAttribute(key, attrs[key]);
    if (parent) parent.appendChild(node);
    return node;
  }

  function title(node, text) {
    const t = el("title", {}, node);
    t.textContent = text;
  }

  function fmt(ms) {
    const abs = Math.abs(ms);
    if (abs < 1000) return Math.round(ms) + " ms";
    if (abs < 60000) return (ms / 1000).toFixed(abs < 10000 ? 2 : 1) + " s";
    return Math.floor(ms / 60000) + " m " + Math.round((ms % 60000) / 1000) + " s";
  }

  function niceStep(span, px) {
    const target = span / Math.max(2, px / 110);
    const pow = Math.pow(10, Math.floor(Math.log10(target)));
    for (const m of [1, 2, 5, 10]) if (pow * m >= target) return pow * m;
    return pow * 10;
  }

  function openSpan(host, spanId) {
    if (!spanId) return;
    const url = host.dataset.spanUrl.replace("SPAN", encodeURIComponent(spanId));
    const panel = document.getElementById("span-panel");
    if (window.htmx && panel) {
      window.htmx.ajax("GET", url, { target: "#span-panel", swap: "innerHTML" });
      panel.scrollIntoView({ block: "nearest", behavior: "smooth" });
    } else {
      window.location.href = url;
    }
  }

  function draw(host, data) {
    const total = Math.max(data.duration, 1);
    const view = views[host.dataset.timeline] || { start: 0, end: total };
    views[host.dataset.timeline] = view;
    const width = Math.max(host.clientWidth, 400);
    const plotW = width - LABEL_W - 12;
    const lanes = data.lanes.length ? data.lanes : ["(no agent)"];
    const height = AXIS_H + MARK_H + lanes.length * LANE_H + 6;
    const scale = plotW / Math.max(view.end - view.start, 0.001);
    const x = (ms) => LABEL_W + (ms - view.start) * scale;

    host.querySelectorAll("svg.tl-svg").forEach((n) => n.remove());
    const svg = el("svg", {
      class: "tl-svg", width: width, height: height,
      viewBox: "0 0 " + width + " " + height, role: "img",
      "aria-label": "Timeline of the run",
    });
    const clipId = host.dataset.timeline + "-clip";
    el("rect", { x: LABEL_W, y: 0, width: plotW, height: height },
      el("clipPath", { id: clipId }, el("defs", {}, svg)));

    // axis and grid
    const step = niceStep(view.end - view.start, plotW);
    const grid = el("g", { class: "tl-grid" }, svg);
    for (let t = Math.ceil(view.start / step) * step; t <= view.end; t += step) {
      const gx = x(t);
      el("line", { x1: gx, x2: gx, y1: AXIS_H - 4, y2: height }, grid);
      const label = el("text", { x: gx + 3, y: 14, class: "tl-tick" }, grid);
      label.textContent = "+" + fmt(t);
    }

    // lanes
    lanes.forEach(function (name, i) {
      const y = AXIS_H + MARK_H + i * LANE_H;
      el("rect", { x: 0, y: y, width: width, height: LANE_H, class: i % 2 ? "tl-lane odd" : "tl-lane" }, svg);
      const label = el("text", { x: 8, y: y + LANE_H / 2 + 4, class: "tl-lane-label" }, svg);
      label.textContent = name.length > 20 ? name.slice(0, 19) + "…" : name;
      title(label, name);
    });

    const plot = el("g", { "clip-path": "url(#" + clipId + ")" }, svg);
    const laneY = (l) => AXIS_H + MARK_H + l * LANE_H;

    // model-call attempts, merged per lane where narrower than a few pixels
    let drawn = 0;
    const attemptRect = function (a, x0, x1) {
      drawn += 1;
      const call = data.calls[a.c];
      const rect = el("rect", {
        x: x0, y: laneY(a.l) + 6, width: Math.max(x1 - x0, 1.5), height: LANE_H - 12, rx: 2,
        class: "tl-attempt " + (a.f ? "failed" : "ok"),
        "data-call": call.id, "data-attempt": a.n,
      }, plot);
      let tip = "Model call " + (call.n || call.id) + " · attempt " + a.n + (a.f ? " · FAILED" : "") +
        "\n" + (call.agent || "") + (call.model ? " · " + call.model : "") +
        "\n+" + fmt(a.s) + " → +" + fmt(a.e) + " (" + fmt(a.e - a.s) + ")";
      if (!a.f && (call.in || call.out)) tip += "\ntokens " + call.in + " in / " + call.out + " out";
      if (a.err) tip += "\n" + a.err;
      title(rect, tip);
      rect.addEventListener("click", () => openSpan(host, a.span || call.span));
    };
    const flush = function (g) {
      if (g.n === 1) { attemptRect(data.attempts[g.first], g.x0, g.x1); return; }
      drawn += 1;
      const rect = el("rect", {
        x: g.x0, y: laneY(g.l) + 6, width: Math.max(g.x1 - g.x0, 1.5), height: LANE_H - 12,
        class: "tl-attempt tl-group " + (g.f ? "failed" : "ok"), "data-count": g.n,
      }, plot);
      title(rect, g.n + " model-call attempts" + (g.f ? ", some failed" : "") + ". Zoom in to see each.");
    };
    const groups = {};
    data.attempts.forEach(function (a, index) {
      if (a.e < view.start || a.s > view.end) return;
      const x0 = x(a.s), x1 = Math.max(x(a.e), x0 + 1.5);
      const prev = groups[a.l];
      if (x1 - x0 < 3) {
        if (prev && x0 - prev.x1 < 1) {
          prev.x1 = Math.max(prev.x1, x1); prev.n += 1; prev.f = prev.f || a.f;
          return;
        }
        if (prev) flush(prev);
        groups[a.l] = { x0: x0, x1: x1, n: 1, f: a.f, l: a.l, first: index };
        return;
      }
      if (prev) { flush(prev); delete groups[a.l]; }
      attemptRect(a, x0, x1);
    });
    Object.keys(groups).forEach((k) => flush(groups[k]));

    // tools (thin bars) and handoffs (diamonds)
    data.points.forEach(function (p) {
      if (p.e < view.start || p.s > view.end) return;
      const y = laneY(p.l);
      let node;
      if (p.k === "handoff") {
        const cx = x(p.s), cy = y + LANE_H / 2;
        node = el("path", {
          d: "M" + cx + " " + (cy - 7) + "l7 7l-7 7l-7 -7z", class: "tl-handoff",
        }, plot);
      } else {
        const x0 = x(p.s);
        node = el("rect", {
          x: x0, y: y + LANE_H - 7, width: Math.max(x(p.e) - x0, 3), height: 5, rx: 1,
          class: "tl-tool" + (p.f ? " failed" : ""),
        }, plot);
      }
      title(node, (p.k === "handoff" ? "Handoff " : "Tool ") + p.label + " at +" + fmt(p.s) +
        (p.k === "tool" ? " (" + fmt(p.e - p.s) + ")" + (p.detail ? "\n" + p.detail : "") : ""));
      node.addEventListener("click", () => openSpan(host, p.span));
    });

    // signals and updates: markers across all lanes
    data.marks.forEach(function (m) {
      if (m.t < view.start || m.t > view.end) return;
      const mx = x(m.t);
      const g = el("g", { class: "tl-mark tl-" + m.k }, plot);
      el("line", { x1: mx, x2: mx, y1: AXIS_H + 2, y2: height }, g);
      el("path", { d: "M" + (mx - 5) + " " + (AXIS_H) + "h10l-5 8z" }, g);
      title(g, m.label + " at +" + fmt(m.t));
    });

    host.appendChild(svg);
    host.dataset.drawn = String(drawn);
  }

  function drawTokens(host, data) {
    host.querySelectorAll("svg").forEach((n) => n.remove());
    const calls = data.calls;
    if (!calls.length) return;
    const width = Math.max(host.clientWidth, 400), height = 90, pad = 4, base = height - 16;
    const max = Math.max(1, ...calls.map((c) => c.in + c.out));
    const slot = (width - LABEL_W - 12) / calls.length;
    const barW = Math.max(1, Math.min(28, slot - (slot > 4 ? 2 : 0)));
    const svg = el("svg", { class: "tok-svg", width: width, height: height, role: "img", "aria-label": "Tokens per model call" });
    const axis = el("text", { x: 8, y: 14, class: "tl-tick" }, svg);
    axis.textContent = "max " + max + " tokens";
    calls.forEach(function (c, i) {
      const x0 = LABEL_W + i * slot;
      const hIn = ((base - pad) * c.in) / max, hOut = ((base - pad) * c.out) / max;
      const g = el("g", { class: "tok" }, svg);
      el("rect", { x: x0, y: base - hIn, width: barW, height: hIn, class: "tok-in" }, g);
      el("rect", { x: x0, y: base - hIn - hOut, width: barW, height: hOut, class: "tok-out" }, g);
      title(g, "Model call " + (c.n || c.id) + (c.agent ? " · " + c.agent : "") + "\n" + c.in + " in / " + c.out + " out");
      g.addEventListener("click", () => openSpan(document.querySelector("[data-timeline]"), c.span));
      if (slot > 18 || i === 0 || i === calls.length - 1) {
        const label = el("text", { x: x0 + barW / 2, y: height - 3, class: "tok-label" }, svg);
        label.textContent = c.n || c.id;
      }
    });
    host.appendChild(svg);
  }

  function zoom(host, data, factor, centerMs) {
    const total = Math.max(data.duration, 1);
    const view = views[host.dataset.timeline];
    const span = view.end - view.start;
    const center = centerMs === undefined ? view.start + span / 2 : centerMs;
    const next = Math.min(total, Math.max(total / 20000, span * factor));
    const ratio = (center - view.start) / span;
    view.start = Math.max(0, center - next * ratio);
    view.end = Math.min(total, view.start + next);
    view.start = Math.max(0, view.end - next);
    draw(host, data);
  }

  function init(root) {
    (root || document).querySelectorAll("[data-timeline]").forEach(function (host) {
      if (host.dataset.ready) return;
      const source = document.getElementById(host.dataset.timeline);
      if (!source) return;
      const data = JSON.parse(source.textContent);
      host.dataset.ready = "1";
      const view = views[host.dataset.timeline];
      if (view && (view.end > data.duration || view.fullyOut)) { view.end = data.duration; }
      if (view && view.end === view.lastTotal) view.end = data.duration; // follow a live run
      draw(host, data);
      views[host.dataset.timeline].lastTotal = data.duration;
      const section = host.closest("section") || document;
      section.querySelectorAll("[data-zoom]").forEach(function (button) {
        button.addEventListener("click", function () {
          const kind = button.dataset.zoom;
          if (kind === "reset") {
            views[host.dataset.timeline] = { start: 0, end: data.duration };
            draw(host, data);
          } else {
            zoom(host, data, kind === "in" ? 0.5 : 2);
          }
          views[host.dataset.timeline].lastTotal = -1;
        });
      });
      host.addEventListener("wheel", function (event) {
        if (!event.ctrlKey && !event.metaKey && !event.shiftKey && Math.abs(event.deltaY) < Math.abs(event.deltaX)) return;
        event.preventDefault();
        const rect = host.getBoundingClientRect();
        const v = views[host.dataset.timeline];
        const px = event.clientX - rect.left - LABEL_W;
        const plotW = Math.max(host.clientWidth, 400) - LABEL_W - 12;
        const at = v.start + (Math.max(0, px) / plotW) * (v.end - v.start);
        zoom(host, data, event.deltaY > 0 ? 1.25 : 0.8, at);
        v.lastTotal = -1;
      }, { passive: false });
      let drag = null;
      host.addEventListener("pointerdown", function (event) {
        if (event.target.closest("rect.tl-attempt, .tl-tool, .tl-handoff")) return;
        drag = { x: event.clientX, view: Object.assign({}, views[host.dataset.timeline]) };
      });
      window.addEventListener("pointerup", () => { drag = null; });
      host.addEventListener("pointermove", function (event) {
        if (!drag) return;
        const plotW = Math.max(host.clientWidth, 400) - LABEL_W - 12;
        const span = drag.view.end - drag.view.start;
        let start = drag.view.start - ((event.clientX - drag.x) / plotW) * span;
        start = Math.max(0, Math.min(data.duration - span, start));
        views[host.dataset.timeline] = { start: start, end: start + span, lastTotal: -1 };
        draw(host, data);
      });
      const tokens = section.querySelector("[data-tokens]");
      if (tokens) drawTokens(tokens, data);
      let pending = null;
      window.addEventListener("resize", function () {
        clearTimeout(pending);
        pending = setTimeout(function () {
          if (!host.isConnected) return;
          draw(host, data);
          if (tokens) drawTokens(tokens, data);
        }, 100);
      });
    });
  }

  document.addEventListener("DOMContentLoaded", () => init(document));
  // Live updates swap the timeline section in; draw the new one.
  document.addEventListener("htmx:oobAfterSwap", () => init(document));
  document.addEventListener("htmx:afterSettle", () => init(document));
  window.loomviewTimeline = { init: init };
})();
