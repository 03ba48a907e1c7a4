/* Loomview run timeline: a Gantt chart of model-call attempts, tools, handoffs,
 * signals, updates and what the workflow waited on, in plain SVG.
 *
 * Data comes from a json_script element (times in ms from the run's start).
 * Idle stretches (no attempt, tool, handoff, signal or update) longer than a
 * second are compressed to a marked gap that says how long they really were;
 * a click on a gap shows it at full length. Every bar is at least MIN_BAR px
 * wide with a larger invisible hit area, and a click on it opens its detail,
 * error included, under the chart (and its span in the side panel). Zoom
 * follows the pointer (Ctrl + wheel), the selected bar (+ / −) or a range
 * (Shift + drag, or drag on the time axis); a plain drag pans. While the user
 * has not zoomed, every redraw fits the whole run, so a live run's view grows
 * with it. All text goes through textContent. */
(function () {
  "use strict";

  const SVG = "http://www.w3.org/2000/svg";
  const LANE_H = 30;
  const AXIS_H = 24;
  const MARK_H = 14;
  const WAIT_ROW = 18; // px per row of the waits lane: timers on one, the rest on the other
  const LABEL_W = 150;
  const MIN_BAR = 6; // px: the narrowest bar drawn
  const HIT_MIN = 14; // px: the narrowest click target
  const GAP_PX = 96; // px: a compressed idle stretch
  const IDLE_MS = 1000; // idle stretches longer than this may be compressed
  const STORE_KEY = "loomview.timeline.compress";
  const fmt = (ms) => window.loomviewFormat.duration(ms);

  // Per chart (keyed by its data element id), kept across live re-renders:
  // view: {mode: "fit"} or {mode: "user", a, b} (real ms); expanded gaps; selection.
  const states = {};

  function state(key) {
    if (!states[key]) states[key] = { view: { mode: "fit" }, expanded: new Set(), selected: null };
    return states[key];
  }

  function compressOn() {
    try {
      return window.localStorage.getItem(STORE_KEY) !== "off";
    } catch (e) {
      return true;
    }
  }

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG, name);
    for (const key in attrs) node.setAttribute(key, attrs[key]);
    if (parent) parent.appendChild(node);
    return node;
  }

  function title(node, text) {
    el("title", {}, node).textContent = text;
  }

  function niceStep(span) {
    const pow = Math.pow(10, Math.floor(Math.log10(span)));
    for (const m of [1, 2, 5, 10]) if (pow * m >= span) return pow * m;
    return pow * 10;
  }

  function niceTimeStep(minMs) {
    // Whole seconds and minutes above a second read better than powers of ten.
    const steps = [1000, 2000, 5000, 10000, 15000, 30000, 60000, 120000, 300000, 600000,
      900000, 1800000, 3600000, 7200000, 21600000, 43200000, 86400000];
    if (minMs < 1000) return niceStep(minMs);
    for (const s of steps) if (s >= minMs) return s;
    return niceStep(minMs);
  }

  // -- time <-> display: idle stretches compressed -------------------------------

  function busyIntervals(data) {
    const spans = [];
    data.attempts.forEach((a) => spans.push([a.s, a.e]));
    data.points.forEach((p) => spans.push([p.s, p.e]));
    data.marks.forEach((m) => spans.push([m.t, m.t]));
    spans.sort((x, y) => x[0] - y[0]);
    const merged = [];
    spans.forEach(function (s) {
      const last = merged[merged.length - 1];
      if (last && s[0] <= last[1]) last[1] = Math.max(last[1], s[1]);
      else merged.push([s[0], s[1]]);
    });
    return merged;
  }

  // Segments of [0, total]: {a, b, comp, d0, d1} with display offsets d0..d1.
  function segments(data, plotW, st) {
    const total = Math.max(data.duration, 1);
    const busy = busyIntervals(data);
    let gaps = [];
    if (compressOn() && busy.length) {
      let at = 0;
      busy.forEach(function (b) {
        if (b[0] - at > IDLE_MS) gaps.push({ a: at, b: b[0] });
        at = Math.max(at, b[1]);
      });
      if (total - at > IDLE_MS) gaps.push({ a: at, b: total });
      gaps = gaps.filter((g) => !st.expanded.has(Math.round(g.a)));
      // Compress only what would be wider than a compressed gap anyway.
      for (let round = 0; round < 6 && gaps.length; round++) {
        const hidden = gaps.reduce((sum, g) => sum + (g.b - g.a), 0);
        const shown = Math.max(total - hidden, 0.001);
        const room = plotW - gaps.length * GAP_PX;
        if (room < plotW * 0.3) { gaps.sort((x, y) => (y.b - y.a) - (x.b - x.a)); gaps.pop(); continue; }
        const scale = room / shown;
        const keep = gaps.filter((g) => (g.b - g.a) * scale > GAP_PX * 1.5);
        if (keep.length === gaps.length) break;
        gaps = keep;
      }
      gaps.sort((x, y) => x.a - y.a);
    }
    const hidden = gaps.reduce((sum, g) => sum + (g.b - g.a), 0);
    const shown = Math.max(total - hidden, 0.001);
    const gapUnits = gaps.length ? (GAP_PX * shown) / Math.max(plotW - gaps.length * GAP_PX, 1) : 0;
    const segs = [];
    let at = 0, d = 0;
    const push = function (a, b, comp) {
      if (b <= a && !comp) return;
      const w = comp ? gapUnits : b - a;
      segs.push({ a: a, b: b, comp: comp, d0: d, d1: d + w });
      d += w;
    };
    gaps.forEach(function (g) { push(at, g.a, false); push(g.a, g.b, true); at = g.b; });
    push(at, total, false);
    if (!segs.length) segs.push({ a: 0, b: total, comp: false, d0: 0, d1: total });
    return segs;
  }

  function mapper(segs) {
    const find = function (key, value) {
      let lo = 0, hi = segs.length - 1;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (segs[mid][key] <= value) lo = mid; else hi = mid - 1;
      }
      return segs[lo];
    };
    return {
      total: segs[segs.length - 1].d1,
      toD: function (ms) {
        const s = find("a", ms);
        if (s.comp) return s.d0 + ((ms - s.a) / Math.max(s.b - s.a, 1e-9)) * (s.d1 - s.d0);
        return s.d0 + (ms - s.a);
      },
      toMs: function (d) {
        const s = find("d0", d);
        if (s.comp) return s.a + ((d - s.d0) / Math.max(s.d1 - s.d0, 1e-9)) * (s.b - s.a);
        return s.a + (d - s.d0);
      },
    };
  }

  // -- drawing -------------------------------------------------------------------

  function openSpan(host, spanId) {
    if (!spanId) return;
    const url = host.dataset.spanUrl.replace("SPAN", encodeURIComponent(spanId));
    const panel = document.getElementById("span-panel");
    if (window.htmx && panel) {
      window.htmx.ajax("GET", url, { target: "#span-panel", swap: "innerHTML" });
    } else {
      window.location.href = url;
    }
  }

  function showDetail(host, info) {
    const box = host.parentElement.querySelector("[data-tl-detail]");
    if (!box) return;
    box.hidden = false;
    box.replaceChildren();
    box.className = "tl-detail" + (info.failed ? " is-failed" : "");
    const head = document.createElement("div");
    head.className = "tl-detail-head";
    const strong = document.createElement("strong");
    strong.textContent = info.title;
    head.appendChild(strong);
    if (info.outcome) {
      const badge = document.createElement("span");
      badge.className = "outcome outcome-" + info.outcome;
      badge.textContent = info.outcome.replace("_", " ");
      head.appendChild(badge);
    }
    const close = document.createElement("button");
    close.type = "button";
    close.className = "btn btn-sm tl-detail-close";
    close.textContent = "Close";
    close.addEventListener("click", function () { box.hidden = true; });
    head.appendChild(close);
    box.appendChild(head);
    const facts = document.createElement("p");
    facts.className = "tl-detail-facts muted";
    facts.textContent = info.facts.filter(Boolean).join(" · ");
    box.appendChild(facts);
    if (info.error) {
      const err = document.createElement("pre");
      err.className = "tl-err";
      err.setAttribute("data-tl-error", "");
      err.textContent = info.error;
      box.appendChild(err);
    }
    if (info.text) {
      const text = document.createElement("pre");
      text.className = "json tl-text";
      text.textContent = info.text;
      box.appendChild(text);
    }
  }

  function draw(host, data) {
    const key = host.dataset.timeline;
    const st = state(key);
    const width = Math.max(host.clientWidth, 400);
    const plotW = width - LABEL_W - 12;
    const segs = segments(data, plotW, st);
    const map = mapper(segs);
    let vs = 0, ve = map.total;
    if (st.view.mode === "user") {
      vs = map.toD(Math.max(0, st.view.a));
      ve = map.toD(Math.min(Math.max(data.duration, 1), st.view.b));
      if (!(ve - vs > 1e-6)) { st.view = { mode: "fit" }; vs = 0; ve = map.total; }
    }
    const scale = plotW / Math.max(ve - vs, 1e-6);
    const X = (ms) => LABEL_W + (map.toD(ms) - vs) * scale;
    const lanes = data.lanes.length ? data.lanes : ["(no agent)"];
    const waits = data.waits || [];
    const hasWaits = waits.length > 0;
    const waitRows = (waits.some((w) => w.k === "timer") ? 1 : 0) + (waits.some((w) => w.k !== "timer") ? 1 : 0);
    const WAIT_H = waitRows * WAIT_ROW + 6;
    const lanesTop = AXIS_H + MARK_H + (hasWaits ? WAIT_H : 0);
    const height = lanesTop + lanes.length * LANE_H + 6;
    host._map = { X: X, map: map, vs: vs, ve: ve, scale: scale, plotW: plotW, segs: segs };

    host.querySelectorAll("svg.tl-svg").forEach((n) => n.remove());
    const svg = el("svg", {
      class: "tl-svg", width: width, height: height,
      viewBox: "0 0 " + width + " " + height, role: "img",
      "aria-label": "Timeline of the run",
    });
    const defs = el("defs", {}, svg);
    const clipId = key + "-clip";
    el("rect", { x: LABEL_W, y: 0, width: plotW + 6, height: height }, el("clipPath", { id: clipId }, defs));
    const hatch = el("pattern", { id: key + "-hatch", width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" }, defs);
    el("rect", { width: 6, height: 6, class: "tl-hatch-bg" }, hatch);
    el("line", { x1: 0, y1: 0, x2: 0, y2: 6, class: "tl-hatch-line" }, hatch);

    // lanes
    if (hasWaits) {
      el("rect", { x: 0, y: AXIS_H + MARK_H, width: width, height: WAIT_H, class: "tl-lane tl-wait-lane" }, svg);
      const label = el("text", { x: 8, y: AXIS_H + MARK_H + WAIT_H / 2 + 4, class: "tl-lane-label tl-wait-label" }, svg);
      label.textContent = "Waiting on";
    }
    lanes.forEach(function (name, i) {
      const y = lanesTop + i * LANE_H;
      el("rect", { x: 0, y: y, width: width, height: LANE_H, class: i % 2 ? "tl-lane odd" : "tl-lane" }, svg);
      const label = el("text", { x: 8, y: y + LANE_H / 2 + 4, class: "tl-lane-label" }, svg);
      label.textContent = name.length > 20 ? name.slice(0, 19) + "…" : name;
      title(label, name);
    });

    const plot = el("g", { "clip-path": "url(#" + clipId + ")" }, svg);
    const laneY = (l) => lanesTop + l * LANE_H;
    const inView = (s, e) => !(map.toD(e) < vs || map.toD(s) > ve);

    // axis and grid, per shown segment; compressed gaps as marked bands
    const grid = el("g", { class: "tl-grid" }, svg);
    const step = niceTimeStep(110 / scale);
    let lastLabel = -Infinity;
    const gapBoxes = segs.filter((g) => g.comp).map((g) => [LABEL_W + (g.d0 - vs) * scale, LABEL_W + (g.d1 - vs) * scale]);
    const clearOfGaps = (x) => gapBoxes.every((b) => x + 58 < b[0] || x > b[1] + 2);
    segs.forEach(function (seg) {
      if (seg.d1 < vs || seg.d0 > ve) return;
      if (seg.comp) {
        const x0 = LABEL_W + (seg.d0 - vs) * scale, x1 = LABEL_W + (seg.d1 - vs) * scale;
        const gap = el("g", { class: "tl-gap", "data-gap": Math.round(seg.a), tabindex: "0", role: "button" }, plot);
        el("rect", { x: x0, y: 0, width: Math.max(x1 - x0, 2), height: height, fill: "url(#" + key + "-hatch)" }, gap);
        el("line", { x1: x0, x2: x0, y1: 0, y2: height, class: "tl-gap-edge" }, gap);
        el("line", { x1: x1, x2: x1, y1: 0, y2: height, class: "tl-gap-edge" }, gap);
        const text = el("text", { x: (x0 + x1) / 2, y: 15, class: "tl-gap-label" }, gap);
        text.textContent = fmt(seg.b - seg.a);
        title(gap, "Idle for " + fmt(seg.b - seg.a) + " (+" + fmt(seg.a) + " → +" + fmt(seg.b) +
          "), drawn compressed. Click to show it at full length.");
        const expand = function () { st.expanded.add(Math.round(seg.a)); draw(host, data); drawTokens(host, data); };
        gap.addEventListener("click", function () { if (!host._dragged) expand(); });
        gap.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); expand(); } });
        lastLabel = x1;
        return;
      }
      let n = 0;
      for (let t = Math.ceil(seg.a / step) * step; t <= seg.b && n < 400; t += step, n++) {
        const gx = X(t);
        if (gx < LABEL_W - 0.5 || gx > width) continue;
        el("line", { x1: gx, x2: gx, y1: AXIS_H - 4, y2: height }, grid);
        if (gx - lastLabel < 64 || !clearOfGaps(gx)) continue;
        const label = el("text", { x: gx + 3, y: 14, class: "tl-tick" }, grid);
        label.textContent = "+" + fmt(t);
        lastLabel = gx;
      }
    });

    const pick = function (node, id, info) {
      node.addEventListener("click", function (event) {
        event.stopPropagation();
        st.selected = id;
        host.querySelectorAll(".tl-selected").forEach((n) => n.classList.remove("tl-selected"));
        host.querySelectorAll('[data-pick="' + id + '"]').forEach((n) => n.classList.add("tl-selected"));
        showDetail(host, info);
        if (info.span) openSpan(host, info.span);
      });
    };
    const bar = function (cls, x0, x1, y, h, attrs, tip, id, info, parent) {
      const w = Math.max(x1 - x0, MIN_BAR);
      const cx = x0 + w / 2;
      const g = el("g", { class: "tl-item", "data-pick": id }, parent || plot);
      const rect = el("rect", Object.assign({ x: cx - w / 2, y: y, width: w, height: h, rx: 2, class: cls }, attrs), g);
      title(rect, tip);
      if (w < HIT_MIN) {
        const hit = el("rect", { x: cx - HIT_MIN / 2, y: y - 3, width: HIT_MIN, height: h + 6, class: "tl-hit" }, g);
        title(hit, tip);
      }
      if (st.selected === id) g.classList.add("tl-selected");
      pick(g, id, info);
      return rect;
    };

    // waits: timers, idle stretches, pending activities
    if (hasWaits) {
      const firstRowTimers = waitRows === 2;
      waits.forEach(function (w, i) {
        const row = firstRowTimers && w.k !== "timer" ? 1 : 0;
        const y = AXIS_H + MARK_H + 3 + row * WAIT_ROW;
        if (!inView(w.s, w.e)) return;
        const x0 = X(w.s), x1 = X(w.e);
        let tip = w.label + "\n+" + fmt(w.s) + " → " + (w.open ? "now" : "+" + fmt(w.e)) + " (" + fmt(w.e - w.s) + ")";
        if (w.fire_at) tip += "\nfires at " + w.fire_at.replace("T", " ").slice(0, 19) + " UTC";
        const rect = bar("tl-wait tl-wait-" + w.k + (w.open ? " open" : ""), x0, x1, y, WAIT_ROW - 4, { "data-wait": w.k }, tip,
          "w" + i, { title: w.label, facts: [w.open ? "still waiting" : "waited " + fmt(w.e - w.s), "from +" + fmt(w.s), w.fire_at ? "fires at " + w.fire_at.replace("T", " ").slice(0, 19) + " UTC" : ""] });
        const shown = Math.min(x1, LABEL_W + plotW) - Math.max(x0, LABEL_W);
        if (shown > 50) {
          const label = el("text", { x: Math.max(x0, LABEL_W) + 4, y: y + (WAIT_ROW - 4) / 2 + 0.5, class: "tl-wait-text" }, rect.parentNode);
          const chars = Math.floor((shown - 8) / 6.2);
          const text = w.label + (w.fire_at && w.open ? " · fires " + w.fire_at.slice(11, 19) : "");
          label.textContent = text.length > chars ? text.slice(0, Math.max(chars - 1, 1)) + "…" : text;
        }
      });
    }

    // model-call attempts, merged per lane where they would overlap
    let drawn = 0;
    const attemptBar = function (a, x0, x1) {
      drawn += 1;
      const call = data.calls[a.c];
      let tip = a.label + (a.f ? " · FAILED" : "") +
        "\n+" + fmt(a.s) + " → +" + fmt(a.e) + " (" + fmt(a.e - a.s) + ")";
      if (a.in !== null || a.out !== null) tip += "\ntokens " + (a.in || 0) + " in / " + (a.out || 0) + " out";
      if (a.cost) tip += " · $" + a.cost;
      if (a.err) tip += "\n" + a.err;
      if (a.u) tip += "\nThe history records this attempt; no span covers it" +
        (a.est ? " (time estimated: Temporal keeps only the last attempt's start)" : "");
      if (call.inh) tip += "\nInherited from run " + call.inh + " (before the reset point)";
      bar("tl-attempt " + (a.f ? "failed" : a.o === "running" ? "running" : "ok") +
        (a.u ? " no-span" : "") + (a.est ? " estimated" : "") + (call.inh ? " inherited" : ""), x0, x1, laneY(a.l) + 6, LANE_H - 12,
        { "data-call": call.id, "data-attempt": a.n }, tip, "a" + a.c + "." + a.n,
        {
          title: a.label, outcome: a.o, failed: a.f, error: a.err, span: a.span || call.span,
          facts: [fmt(a.e - a.s), "+" + fmt(a.s) + " → +" + fmt(a.e),
            a.in !== null || a.out !== null ? (a.in || 0) + " in / " + (a.out || 0) + " out tokens" : "",
            a.cost ? "$" + a.cost : "",
            a.u ? (a.est ? "no span covers it; time estimated" : "no span covers it") : "",
            call.inh ? "inherited from run " + call.inh : ""],
        });
    };
    const flush = function (g) {
      if (g.n === 1) { attemptBar(data.attempts[g.first], g.x0, g.x1); return; }
      drawn += 1;
      // Red only when every attempt in it failed: a few failures among many calls
      // are ticks where they happened, not a lane painted red.
      const failed = g.fails.length;
      const group = el("rect", {
        x: g.x0, y: laneY(g.l) + 6, width: Math.max(g.x1 - g.x0, MIN_BAR), height: LANE_H - 12,
        class: "tl-attempt tl-group " + (failed === g.n ? "failed" : "ok"), "data-count": g.n,
        "data-failed": failed,
      }, plot);
      if (failed && failed < g.n) {
        g.fails.forEach(function (x) {
          el("rect", { x: x, y: laneY(g.l) + 6, width: 2, height: LANE_H - 12, class: "tl-group-fail" }, plot);
        });
      }
      title(group, g.n + " model-call attempts" + (failed ? ", " + failed + " failed" : "") + ". Click to zoom in.");
      group.addEventListener("click", function (event) {
        event.stopPropagation();
        zoomTo(host, data, map.toMs(vs + (g.x0 - LABEL_W) / scale), map.toMs(vs + (g.x1 - LABEL_W) / scale));
      });
    };
    const groups = {};
    data.attempts.forEach(function (a, index) {
      if (!inView(a.s, a.e)) return;
      const x0 = X(a.s), x1 = Math.max(X(a.e), x0 + 1);
      const prev = groups[a.l];
      if (x1 - x0 < MIN_BAR) {
        if (prev && x0 - prev.x1 < 2) {
          prev.x1 = Math.max(prev.x1, x1, prev.x0 + MIN_BAR); prev.n += 1;
          if (a.f) prev.fails.push(x0);
          return;
        }
        if (prev) flush(prev);
        groups[a.l] = { x0: x0, x1: Math.max(x1, x0 + MIN_BAR), n: 1, fails: a.f ? [x0] : [], l: a.l, first: index };
        return;
      }
      if (prev) { flush(prev); delete groups[a.l]; }
      attemptBar(a, x0, x1);
    });
    Object.keys(groups).forEach((k) => flush(groups[k]));

    // tools (thin bars) and handoffs (diamonds)
    data.points.forEach(function (p, i) {
      if (!inView(p.s, p.e)) return;
      const y = laneY(p.l);
      const info = {
        title: (p.k === "handoff" ? "Handoff " : "Tool ") + p.label, outcome: p.f ? "failed" : "",
        failed: p.f, error: p.err, text: p.detail, span: p.span,
        facts: [p.k === "tool" ? fmt(p.e - p.s) : "", "at +" + fmt(p.s)],
      };
      const tip = info.title + " at +" + fmt(p.s) + (p.k === "tool" ? " (" + fmt(p.e - p.s) + ")" : "") +
        (p.err ? "\n" + p.err : "") + (p.detail ? "\n" + p.detail : "");
      if (p.k === "handoff") {
        const cx = X(p.s), cy = y + LANE_H / 2;
        const g = el("g", { class: "tl-item", "data-pick": "p" + i }, plot);
        const node = el("path", { d: "M" + cx + " " + (cy - 7) + "l7 7l-7 7l-7 -7z", class: "tl-handoff" }, g);
        title(node, tip);
        pick(g, "p" + i, info);
      } else {
        bar("tl-tool" + (p.f ? " failed" : ""), X(p.s), X(p.e), y + LANE_H - 7, 5, {}, tip, "p" + i, info);
      }
    });

    // signals and updates: markers across all lanes
    data.marks.forEach(function (m, i) {
      if (!inView(m.t, m.t)) return;
      const mx = X(m.t);
      const g = el("g", { class: "tl-mark tl-" + m.k, "data-pick": "m" + i }, plot);
      el("line", { x1: mx, x2: mx, y1: AXIS_H + 2, y2: height }, g);
      el("path", { d: "M" + (mx - 5) + " " + AXIS_H + "h10l-5 8z" }, g);
      el("rect", { x: mx - HIT_MIN / 2, y: AXIS_H - 2, width: HIT_MIN, height: MARK_H + 2, class: "tl-hit" }, g);
      title(g, m.label + " at +" + fmt(m.t));
      pick(g, "m" + i, { title: m.label, facts: ["at +" + fmt(m.t)], span: m.span });
    });

    host.appendChild(svg);
    host.dataset.drawn = String(drawn);
    host.dataset.view = st.view.mode;
    host.dataset.gaps = String(segs.filter((s) => s.comp).length);
    host.dataset.window = map.toMs(vs).toFixed(3) + "," + map.toMs(ve).toFixed(3);
  }

  // Tokens per model call, on the timeline's own time axis.
  function drawTokens(host, data) {
    const tokens = host._tokens;
    if (!tokens || !host._map) return;
    tokens.querySelectorAll("svg").forEach((n) => n.remove());
    const calls = data.calls;
    if (!calls.length) return;
    const m = host._map;
    const width = Math.max(host.clientWidth, 400), height = 84, base = height - 16;
    const max = Math.max(1, ...calls.map((c) => c.in + c.out));
    const svg = el("svg", { class: "tok-svg", width: width, height: height, role: "img", "aria-label": "Tokens per model call" });
    const clipId = host.dataset.timeline + "-tok-clip";
    el("rect", { x: LABEL_W, y: 0, width: m.plotW + 6, height: height }, el("clipPath", { id: clipId }, el("defs", {}, svg)));
    const axis = el("text", { x: 8, y: 14, class: "tl-tick" }, svg);
    axis.textContent = "max " + max + " tokens";
    const plot = el("g", { "clip-path": "url(#" + clipId + ")" }, svg);
    const ends = {};
    data.attempts.forEach((a) => { ends[a.c] = Math.max(ends[a.c] || 0, a.e); });
    let lastLabel = -Infinity;
    calls.forEach(function (c, i) {
      const x0 = m.X(c.t), x1 = m.X(ends[i] !== undefined ? ends[i] : c.t);
      const barW = Math.max(4, Math.min(28, x1 - x0));
      const hIn = ((base - 4) * c.in) / max, hOut = ((base - 4) * c.out) / max;
      const g = el("g", { class: "tok", "data-call": c.id }, plot);
      el("rect", { x: x0, y: base - hIn, width: barW, height: hIn, class: "tok-in" }, g);
      el("rect", { x: x0, y: base - hIn - hOut, width: barW, height: hOut, class: "tok-out" }, g);
      title(g, c.label + "\n" + c.in + " in / " + c.out + " out" + (c.cost ? " · $" + c.cost : ""));
      g.addEventListener("click", () => openSpan(host, c.span));
      if (x0 - lastLabel > 18 && x0 >= LABEL_W - 2) {
        const label = el("text", { x: x0 + barW / 2, y: height - 3, class: "tok-label" }, plot);
        label.textContent = c.n || c.id;
        lastLabel = x0;
      }
    });
    tokens.appendChild(svg);
  }

  function redraw(host, data) {
    draw(host, data);
    drawTokens(host, data);
  }

  function zoomTo(host, data, a, b) {
    const total = Math.max(data.duration, 1);
    const span = Math.max(b - a, total / 20000, 0.05);
    const mid = (a + b) / 2;
    let start = Math.max(0, mid - span / 2);
    const end = Math.min(total, start + span);
    start = Math.max(0, end - span);
    const st = state(host.dataset.timeline);
    st.view = start <= 0 && end >= total ? { mode: "fit" } : { mode: "user", a: start, b: end };
    redraw(host, data);
  }

  // Zoom by factor around a display position (default: the selection, else the visible bars).
  function zoom(host, data, factor, atD) {
    const m = host._map;
    if (!m) return;
    let center = atD;
    if (center === undefined) center = focusD(host, data);
    const span = (m.ve - m.vs) * factor;
    const ratio = (center - m.vs) / Math.max(m.ve - m.vs, 1e-9);
    let vs = center - span * ratio, ve = vs + span;
    if (vs < 0) { ve -= vs; vs = 0; }
    if (ve > m.map.total) { vs -= ve - m.map.total; ve = m.map.total; vs = Math.max(0, vs); }
    const st = state(host.dataset.timeline);
    if (vs <= 1e-9 && ve >= m.map.total - 1e-9) st.view = { mode: "fit" };
    else st.view = { mode: "user", a: m.map.toMs(vs), b: m.map.toMs(ve) };
    redraw(host, data);
  }

  function focusD(host, data) {
    const m = host._map;
    const st = state(host.dataset.timeline);
    const sel = st.selected;
    if (sel && sel[0] === "a") {
      const parts = sel.slice(1).split(".");
      const a = data.attempts.find((x) => String(x.c) === parts[0] && String(x.n) === parts[1]);
      if (a) return m.map.toD((a.s + a.e) / 2);
    }
    // The middle visible bar: zooming never lands on an empty stretch.
    const centers = data.attempts.concat(data.points)
      .map((x) => m.map.toD((x.s + x.e) / 2)).filter((d) => d >= m.vs && d <= m.ve).sort((x, y) => x - y);
    if (centers.length) return centers[Math.floor(centers.length / 2)];
    return (m.vs + m.ve) / 2;
  }

  function init(root) {
    (root || document).querySelectorAll("[data-timeline]").forEach(function (host) {
      if (host.dataset.ready) return;
      const source = document.getElementById(host.dataset.timeline);
      if (!source) return;
      const data = JSON.parse(source.textContent);
      host.dataset.ready = "1";
      const section = host.closest("section") || document;
      host._tokens = section.querySelector("[data-tokens]");
      const st = state(host.dataset.timeline);
      if (st.view.mode === "user" && st.view.a >= data.duration) st.view = { mode: "fit" };
      redraw(host, data);

      section.querySelectorAll("[data-zoom]").forEach(function (button) {
        button.addEventListener("click", function () {
          const kind = button.dataset.zoom;
          if (kind === "reset") {
            st.view = { mode: "fit" };
            st.expanded.clear();
            redraw(host, data);
          } else {
            zoom(host, data, kind === "in" ? 0.5 : 2);
          }
        });
      });
      const compress = section.querySelector("[data-compress]");
      if (compress) {
        compress.checked = compressOn();
        compress.addEventListener("change", function () {
          try { window.localStorage.setItem(STORE_KEY, compress.checked ? "on" : "off"); } catch (e) { /* private mode */ }
          document.querySelectorAll("[data-timeline]").forEach(function (h) {
            if (h._data) redraw(h, h._data);
          });
        });
      }
      host._data = data;
      host.addEventListener("keydown", function (event) {
        if (event.target !== host) return;
        if (event.key === "+" || event.key === "=") zoom(host, data, 0.5);
        else if (event.key === "-") zoom(host, data, 2);
        else if (event.key === "0") { st.view = { mode: "fit" }; redraw(host, data); }
        else return;
        event.preventDefault();
      });
      host.addEventListener("wheel", function (event) {
        if (!event.ctrlKey && !event.metaKey) return; // a plain wheel scrolls the page
        event.preventDefault();
        const m = host._map;
        const rect = host.getBoundingClientRect();
        const px = Math.min(Math.max(event.clientX - rect.left - LABEL_W, 0), m.plotW);
        zoom(host, data, event.deltaY > 0 ? 1.25 : 0.8, m.vs + px / m.scale);
      }, { passive: false });

      let drag = null;
      const brush = host.querySelector("[data-brush]");
      host.addEventListener("pointerdown", function (event) {
        // A drag may start anywhere but on a bar; a click on a gap still expands it.
        if (event.button !== 0 || event.target.closest(".tl-item, .tl-group")) return;
        const rect = host.getBoundingClientRect();
        const px = event.clientX - rect.left;
        if (px < LABEL_W) return;
        const onAxis = event.clientY - rect.top < AXIS_H + 4;
        drag = { x: event.clientX, px: px, mode: event.shiftKey || onAxis ? "brush" : "pan",
                 m: host._map, moved: false, pointer: event.pointerId };
      });
      host.addEventListener("pointermove", function (event) {
        if (!drag) return;
        const dx = event.clientX - drag.x;
        if (!drag.moved && Math.abs(dx) > 3) {
          // Captured only once it is a drag: a capture on pointerdown would retarget
          // the click to the host, and a click on a gap must still expand it.
          drag.moved = true;
          host.setPointerCapture(drag.pointer);
        }
        if (!drag.moved) return;
        const m = drag.m;
        if (drag.mode === "brush") {
          if (!brush) return;
          const rect = host.getBoundingClientRect();
          const px = Math.min(Math.max(event.clientX - rect.left, LABEL_W), LABEL_W + m.plotW);
          brush.hidden = false;
          brush.style.left = Math.min(px, drag.px) + "px";
          brush.style.width = Math.abs(px - drag.px) + "px";
          drag.to = px;
          return;
        }
        const span = m.ve - m.vs;
        let vs = m.vs - dx / m.scale;
        vs = Math.max(0, Math.min(m.map.total - span, vs));
        st.view = { mode: "user", a: m.map.toMs(vs), b: m.map.toMs(vs + span) };
        redraw(host, data);
      });
      const end = function () {
        if (!drag) return;
        host._dragged = drag.moved;
        setTimeout(function () { host._dragged = false; }, 0);
        if (drag.mode === "brush" && drag.moved && drag.to !== undefined) {
          const m = drag.m;
          const d0 = m.vs + (Math.min(drag.px, drag.to) - LABEL_W) / m.scale;
          const d1 = m.vs + (Math.max(drag.px, drag.to) - LABEL_W) / m.scale;
          if (Math.abs(drag.to - drag.px) > 4) zoomTo(host, data, m.map.toMs(d0), m.map.toMs(d1));
        }
        if (brush) brush.hidden = true;
        drag = null;
      };
      host.addEventListener("pointerup", end);
      host.addEventListener("pointercancel", end);

      let pending = null;
      window.addEventListener("resize", function () {
        clearTimeout(pending);
        pending = setTimeout(function () {
          if (host.isConnected) redraw(host, data);
        }, 100);
      });
    });
  }

  document.addEventListener("DOMContentLoaded", () => init(document));
  // Live updates swap the timeline section in; draw the new one.
  document.addEventListener("htmx:oobAfterSwap", () => init(document));
  document.addEventListener("htmx:afterSettle", () => init(document));
  window.loomviewTimeline = { init: init, states: states };
})();
