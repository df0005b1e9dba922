// COAT match panel: an interactive view of the dense matches of COAT Align / COAT Transfer, inside the node.
//
// When such a node runs, its UI output carries `coat_matches: [{id, scales, batch, content, style}]` (image
// references to small temp previews). The panel shows content | style side by side (through /view), fetches
// the dense matches from the pack route GET /api/coat/matches/{id} and draws the confident ones as lines
// coloured by confidence (red 0 .. green 1), one scale at a time, subsampled to MAX_LINES.
// Hover a content point: its match and confidence. Hover a style point: the content points that map there.
// The last result is kept in node.properties (RESULT_PROP) and fetched again after the workflow is reloaded.
//
// Testing hooks on the root element (class `coat-match-panel`): data-scale (the scale shown), data-match-count
// (matches drawn now), data-hover-confidence (the last hovered match), data-content-rect / data-style-rect
// ("x,y,w,h" of the two images in the canvas, CSS pixels), data-state (empty | loading | ready | error).
//
// Isolation (comfy-test lint): no globals, no document-level listeners, inline styles only, names `coat.*`.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const PANEL_NODES = new Set(["COATAlign", "COATTransfer"]);
const WIDGET_NAME = "coat_match_panel";
const RESULT_PROP = "coat_match";        // last result: {id, scales, batch, content, style}
const VIEW_PROP = "coat_match_view";     // view settings: {scale, threshold, heatmap, lines, item}
const MAX_LINES = 400;                   // lines drawn at most (evenly spread over the confident matches)
const EMPTY_HEIGHT = 64;                 // panel height before the node has run
const PANEL_HEIGHT = 280;                // panel height once it shows a result
const MARGIN = 4;                        // the DOM widget's margin
const BACKGROUND = "#161616";
const PAD = 6;
const GAP = 14;
const ID_RE = /^[0-9a-f]{16}$/;

const panels = new WeakMap();            // node -> MatchPanel

function clamp01(x) {
  return Math.max(0, Math.min(1, x));
}

function colour(c, alpha) {
  return `hsla(${Math.round(120 * clamp01(c))}, 90%, 50%, ${alpha})`;
}

function viewURL(ref) {
  const q = new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder || "", type: ref.type || "temp" });
  return api.apiURL(`/view?${q.toString()}`);
}

// The largest rectangle of aspect w/h centred in the box.
function fit(size, x, y, bw, bh) {
  const aspect = size && size[0] > 0 && size[1] > 0 ? size[0] / size[1] : 1;
  let w = bw;
  let h = bw / aspect;
  if (h > bh) {
    h = bh;
    w = bh * aspect;
  }
  return { x: x + (bw - w) / 2, y: y + (bh - h) / 2, w: Math.max(0, w), h: Math.max(0, h) };
}

function inside(r, x, y) {
  return x >= r.x && y >= r.y && x <= r.x + r.w && y <= r.y + r.h;
}

function el(tag, style, props) {
  const e = document.createElement(tag);
  Object.assign(e.style, style || {});
  Object.assign(e, props || {});
  return e;
}

function savedResult(node) {
  const r = node.properties?.[RESULT_PROP];
  return r && typeof r.id === "string" && ID_RE.test(r.id) ? r : null;
}

class MatchPanel {
  constructor(node) {
    this.node = node;
    this.entry = null;      // the node's coat_matches entry
    this.data = null;       // the route's JSON
    this.images = { content: null, style: null };
    this.token = 0;         // drops stale fetches
    this.hover = null;      // {kind: "content", index} | {kind: "style", indices}
    this.shown = [];        // indices of the matches drawn now
    this.rects = null;
    this.frame = 0;
    this.view = Object.assign({ scale: null, threshold: 0.5, heatmap: false, lines: true, item: 0 },
      node.properties?.[VIEW_PROP] || {});
    this.build();
  }

  build() {
    const root = el("div", {
      display: "flex", flexDirection: "column", gap: "4px", width: "100%", height: "100%",
      boxSizing: "border-box", font: "11px sans-serif", color: "#ddd", overflow: "hidden",
    });
    root.className = "coat-match-panel";
    root.dataset.scale = "";
    root.dataset.matchCount = "0";
    root.dataset.hoverConfidence = "";
    root.dataset.state = "empty";
    // Keep pointer gestures (slider drags, hovering) from dragging or selecting the node underneath.
    root.addEventListener("pointerdown", (e) => e.stopPropagation());

    const bar = el("div", { display: "flex", flexWrap: "wrap", alignItems: "center", gap: "6px" });
    const control = { fontSize: "11px", background: "#222", color: "#ddd", border: "1px solid #444" };
    this.scaleSel = el("select", control, { className: "coat-scale", title: "Scale shown (divisor of the model resolution)" });
    this.itemSel = el("select", { ...control, display: "none" }, { className: "coat-item", title: "Batch item" });
    this.threshold = el("input", { width: "90px" }, {
      className: "coat-threshold", type: "range", min: "0", max: "1", step: "0.01",
      value: String(this.view.threshold), title: "Minimum confidence of the matches drawn",
    });
    this.thresholdText = el("span", { minWidth: "28px" }, { textContent: Number(this.view.threshold).toFixed(2) });
    const check = (cls, text, on) => {
      const box = el("input", {}, { className: cls, type: "checkbox", checked: on });
      const label = el("label", { display: "inline-flex", alignItems: "center", gap: "2px", cursor: "pointer" });
      label.append(box, document.createTextNode(text));
      return [box, label];
    };
    let heatLabel;
    let linesLabel;
    [this.heatBox, heatLabel] = check("coat-heatmap", "heatmap", this.view.heatmap);
    [this.linesBox, linesLabel] = check("coat-lines", "lines", this.view.lines);
    const confLabel = el("span", {}, { textContent: "conf >=" });
    bar.append(this.scaleSel, this.itemSel, confLabel, this.threshold, this.thresholdText, heatLabel, linesLabel);

    this.box = el("div", { position: "relative", flex: "1 1 auto", minHeight: "0" });
    this.canvas = el("canvas", { position: "absolute", left: "0", top: "0", width: "100%", height: "100%" },
      { className: "coat-canvas" });
    this.box.append(this.canvas);
    this.info = el("div", { minHeight: "14px", whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis",
      color: "#aaa" }, { className: "coat-info", textContent: "Run the node to see its matches." });
    root.append(bar, this.box, this.info);
    this.root = root;

    this.scaleSel.addEventListener("change", () => this.setView({ scale: Number(this.scaleSel.value) }));
    this.itemSel.addEventListener("change", () => {
      this.setView({ item: Number(this.itemSel.value) });
      if (this.entry) this.loadImages(this.entry, this.view.item);
      if (this.data) this.setState("ready", this.readyMessage());
    });
    this.threshold.addEventListener("input", () => this.setView({ threshold: Number(this.threshold.value) }));
    this.heatBox.addEventListener("change", () => this.setView({ heatmap: this.heatBox.checked }));
    this.linesBox.addEventListener("change", () => this.setView({ lines: this.linesBox.checked }));
    this.canvas.addEventListener("pointermove", (e) => this.onPointer(e));
    this.canvas.addEventListener("pointerleave", () => {
      this.hover = null;
      this.schedule();
    });
    this.resizer = new ResizeObserver(() => this.schedule());
    this.resizer.observe(this.box);
  }

  dispose() {
    this.resizer?.disconnect();
    this.token += 1;
  }

  hasResult() {
    return this.entry !== null;
  }

  setView(change) {
    Object.assign(this.view, change);
    this.thresholdText.textContent = Number(this.view.threshold).toFixed(2);
    this.node.properties = this.node.properties || {};
    this.node.properties[VIEW_PROP] = { ...this.view };
    this.hover = null;
    this.update();
  }

  setState(state, message) {
    this.root.dataset.state = state;
    if (message !== undefined) this.info.textContent = message;
  }

  // A new result (from onExecuted, or the saved one after a reload): load its images and fetch its matches.
  async load(entry) {
    const token = ++this.token;
    this.entry = entry;
    this.data = null;
    this.hover = null;
    this.setState("loading", "Loading matches...");
    const item = Math.min(this.view.item || 0, Math.max(0, (entry.content || []).length - 1));
    this.loadImages(entry, item);
    this.update();
    try {
      const res = await api.fetchApi(`/coat/matches/${encodeURIComponent(entry.id)}`, { cache: "no-store" });
      const body = await res.json().catch(() => ({}));
      if (token !== this.token) return;
      if (!res.ok) {
        const why = res.status === 404 ? "this result is no longer on the server: run the node again"
          : body.message || `HTTP ${res.status}`;
        this.setState("error", `Matches unavailable: ${why}`);
        this.update();
        return;
      }
      this.setData(body);
    } catch (err) {
      if (token !== this.token) return;
      this.setState("error", `Matches unavailable: ${err}`);
      this.update();
    }
  }

  loadImages(entry, item) {
    const pick = (list, i) => (list && list.length ? list[Math.min(i, list.length - 1)] : null);
    for (const kind of ["content", "style"]) {
      const ref = pick(entry[kind], item);
      if (!ref) {
        this.images[kind] = null;
        continue;
      }
      const img = new Image();
      img.onload = () => this.schedule();
      img.src = viewURL(ref);
      this.images[kind] = img;
    }
  }

  setData(data) {
    this.data = data;
    const items = data.items || [];
    this.itemSel.replaceChildren(...items.map((_, i) => el("option", {}, { value: String(i), textContent: `item ${i}` })));
    this.itemSel.style.display = items.length > 1 ? "" : "none";
    if (!(this.view.item < items.length)) this.view.item = 0;
    this.itemSel.value = String(this.view.item);
    const scales = data.scales || [];
    this.scaleSel.replaceChildren(...scales.map((s) => el("option", {}, { value: String(s), textContent: `1/${s}` })));
    if (!scales.includes(this.view.scale)) this.view.scale = this.defaultScale();
    this.scaleSel.value = String(this.view.scale);
    this.setState("ready", this.readyMessage());
    this.update();
  }

  // What the idle info line says: how to explore, and which pose of the style this pair matched (its mirror
  // image, the style turned) when not the style as given.
  readyMessage() {
    const item = this.data?.items?.[this.view.item];
    const turn = Number(item?.rotation) || 0;
    if (!item?.mirrored && !turn && !item?.fitted) return "Hover a point of either image.";
    const turned = (deg) => `turned ${Math.abs(deg)}\u00b0 ${deg > 0 ? "clockwise" : "anticlockwise"}`;
    let pose = item.mirrored ? "the style's mirror image" : "the style";
    if (item.fitted) {
      const how = [`shown ${Number(item.zoom).toFixed(2)}x`];
      if (Number(item.turn)) how.push(turned(Number(item.turn)));
      const [dx, dy] = (item.shift || [0, 0]).map(Number);
      if (Math.hypot(dx, dy) >= 0.02) how.push("moved");
      pose += ` re-posed by its own matches (${how.join(", ")})`;
    } else if (turn) {
      pose += ` ${turned(turn)}`;
    }
    return `Hover a point of either image. This pair matched ${pose} (lines point into the style as shown).`;
  }

  // The scale with the most matches at or above the threshold (the finer one on a tie).
  defaultScale() {
    const levels = this.data?.items?.[this.view.item]?.levels || [];
    let best = levels.length ? levels[0].scale : null;
    let most = -1;
    for (const level of levels) {
      const n = level.confidence.filter((c) => c >= this.view.threshold).length;
      if (n > most || (n === most && level.scale < best)) {
        most = n;
        best = level.scale;
      }
    }
    return best;
  }

  level() {
    const levels = this.data?.items?.[this.view.item]?.levels || [];
    return levels.find((l) => l.scale === this.view.scale) || levels[0] || null;
  }

  // Recompute what is drawn (and the testing attributes) now; paint on the next frame.
  update() {
    const level = this.level();
    let shown = [];
    if (level) {
      const t = this.view.threshold;
      for (let i = 0; i < level.confidence.length; i++) {
        if (level.confidence[i] >= t) shown.push(i);
      }
      if (shown.length > MAX_LINES) {
        const step = (shown.length - 1) / (MAX_LINES - 1);
        shown = Array.from({ length: MAX_LINES }, (_, k) => shown[Math.round(k * step)]);
      }
    }
    this.shown = shown;
    this.root.dataset.scale = level ? String(level.scale) : "";
    this.root.dataset.matchCount = String(shown.length);
    this.layout();
    this.schedule();
  }

  layout() {
    const w = this.canvas.clientWidth;
    const h = this.canvas.clientHeight;
    const half = Math.max(0, (w - 2 * PAD - GAP) / 2);
    const inner = Math.max(0, h - 2 * PAD);
    const cs = this.data?.content_size || this.imageSize("content");
    const ss = this.data?.style_size || this.imageSize("style");
    this.rects = { content: fit(cs, PAD, PAD, half, inner), style: fit(ss, PAD + half + GAP, PAD, half, inner) };
    const str = (r) => [r.x, r.y, r.w, r.h].map((v) => v.toFixed(1)).join(",");
    this.root.dataset.contentRect = str(this.rects.content);
    this.root.dataset.styleRect = str(this.rects.style);
  }

  imageSize(kind) {
    const img = this.images[kind];
    return img && img.naturalWidth ? [img.naturalWidth, img.naturalHeight] : [1, 1];
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.paint();
    });
  }

  paint() {
    const canvas = this.canvas;
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    if (!w || !h) return;
    this.layout();
    const bounds = canvas.getBoundingClientRect();
    const zoom = bounds.width > 0 ? bounds.width / w : 1;
    const ratio = Math.min(3, Math.max(1, (window.devicePixelRatio || 1) * zoom));
    const cw = Math.round(w * ratio);
    const ch = Math.round(h * ratio);
    if (canvas.width !== cw || canvas.height !== ch) {
      canvas.width = cw;
      canvas.height = ch;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.fillStyle = BACKGROUND;
    ctx.fillRect(0, 0, w, h);
    const { content: rc, style: rs } = this.rects;
    for (const [kind, r] of [["content", rc], ["style", rs]]) {
      const img = this.images[kind];
      if (img && img.complete && img.naturalWidth) {
        ctx.drawImage(img, r.x, r.y, r.w, r.h);
      } else if (this.entry) {
        ctx.fillStyle = "#2a2a2a";
        ctx.fillRect(r.x, r.y, r.w, r.h);
      }
    }
    const level = this.level();
    if (!level) return;
    const cuv = level.content_uv;
    const suv = level.style_uv;
    const conf = level.confidence;
    const cp = (i) => [rc.x + cuv[2 * i] * rc.w, rc.y + cuv[2 * i + 1] * rc.h];
    const sp = (i) => [rs.x + suv[2 * i] * rs.w, rs.y + suv[2 * i + 1] * rs.h];

    if (this.view.heatmap) {
      const [du, dv] = level.cell_uv;
      const cwid = du * rc.w;
      const chei = dv * rc.h;
      for (let i = 0; i < conf.length; i++) {
        const [x, y] = cp(i);
        ctx.fillStyle = colour(conf[i], 0.5);
        ctx.fillRect(x - cwid / 2, y - chei / 2, cwid, chei);
      }
    }
    const dot = (x, y, r, fill, stroke) => {
      ctx.beginPath();
      ctx.arc(x, y, r, 0, 2 * Math.PI);
      ctx.fillStyle = fill;
      ctx.fill();
      if (stroke) {
        ctx.strokeStyle = stroke;
        ctx.lineWidth = 1.5;
        ctx.stroke();
      }
    };
    const line = (i, width, alpha) => {
      const [x0, y0] = cp(i);
      const [x1, y1] = sp(i);
      ctx.beginPath();
      ctx.moveTo(x0, y0);
      ctx.lineTo(x1, y1);
      ctx.strokeStyle = colour(conf[i], alpha);
      ctx.lineWidth = width;
      ctx.stroke();
    };
    const dimmed = this.hover !== null;
    for (const i of this.shown) {
      if (this.view.lines) line(i, 1, dimmed ? 0.25 : 0.75);
      const [x0, y0] = cp(i);
      const [x1, y1] = sp(i);
      dot(x0, y0, 2, colour(conf[i], dimmed ? 0.4 : 0.95));
      dot(x1, y1, 2, colour(conf[i], dimmed ? 0.4 : 0.95));
    }
    if (this.hover) {
      const picked = this.hover.kind === "content" ? [this.hover.index] : this.hover.indices;
      for (const i of picked) {
        line(i, 2.5, 1);
        dot(...cp(i), 4, colour(conf[i], 1), "#fff");
        dot(...sp(i), 4, colour(conf[i], 1), "#fff");
      }
      if (this.hover.kind === "style") {
        ctx.beginPath();
        ctx.arc(this.hover.x, this.hover.y, this.hover.radius, 0, 2 * Math.PI);
        ctx.strokeStyle = "#fff";
        ctx.lineWidth = 1;
        ctx.stroke();
      }
    }
  }

  onPointer(e) {
    const level = this.level();
    if (!level || !this.rects) return;
    const b = this.canvas.getBoundingClientRect();
    if (!b.width || !b.height) return;
    const x = (e.clientX - b.left) * (this.canvas.clientWidth / b.width);
    const y = (e.clientY - b.top) * (this.canvas.clientHeight / b.height);
    const { content: rc, style: rs } = this.rects;
    const conf = level.confidence;
    let hover = null;
    if (inside(rc, x, y)) {
      // The nearest content cell (any confidence): its match, even an unconfident one.
      const cuv = level.content_uv;
      const reach = Math.max(level.cell_uv[0] * rc.w, level.cell_uv[1] * rc.h);
      let best = -1;
      let bestD = Infinity;
      for (let i = 0; i < conf.length; i++) {
        const d = Math.hypot(rc.x + cuv[2 * i] * rc.w - x, rc.y + cuv[2 * i + 1] * rc.h - y);
        if (d < bestD) {
          bestD = d;
          best = i;
        }
      }
      if (best >= 0 && bestD <= reach) {
        hover = { kind: "content", index: best };
        const su = level.style_uv[2 * best];
        const sv = level.style_uv[2 * best + 1];
        this.root.dataset.hoverConfidence = conf[best].toFixed(3);
        this.info.textContent = `content (${level.content_uv[2 * best].toFixed(2)}, ${level.content_uv[2 * best + 1].toFixed(2)})`
          + ` -> style (${su.toFixed(2)}, ${sv.toFixed(2)}), confidence ${conf[best].toFixed(3)}`
          + (level.confident[best] ? "" : " (below the model's threshold)");
      }
    } else if (inside(rs, x, y)) {
      // Every drawn-eligible content cell whose match lands near this style point.
      const suv = level.style_uv;
      const radius = Math.max(8, 0.6 * Math.max(level.cell_uv[0] * rs.w, level.cell_uv[1] * rs.h));
      const indices = [];
      for (let i = 0; i < conf.length; i++) {
        if (conf[i] < this.view.threshold) continue;
        if (Math.hypot(rs.x + suv[2 * i] * rs.w - x, rs.y + suv[2 * i + 1] * rs.h - y) <= radius) indices.push(i);
      }
      hover = { kind: "style", indices, x, y, radius };
      if (indices.length) {
        const best = Math.max(...indices.map((i) => conf[i]));
        this.root.dataset.hoverConfidence = best.toFixed(3);
        this.info.textContent = `${indices.length} content point(s) map here, best confidence ${best.toFixed(3)}`;
      } else {
        this.info.textContent = "No content point maps here at this threshold.";
      }
    }
    this.hover = hover;
    this.schedule();
  }
}

function panelOf(node) {
  return panels.get(node) || null;
}

// Grow the node downwards so that the panel gets its height (never shrinks what the user chose; the width is
// left alone so that the node does not grow over its right-hand neighbours).
function fitNode(node) {
  if (typeof node.computeSize !== "function" || typeof node.setSize !== "function") return;
  const need = node.computeSize();
  if (node.size[1] < need[1]) node.setSize([node.size[0], need[1]]);
  node.setDirtyCanvas?.(true, true);
}

function minHeight(panel) {
  return panel.hasResult() ? PANEL_HEIGHT : EMPTY_HEIGHT;
}

// The panel's own minimum height too: frontends that size a DOM widget by its content (Nodes 2.0 in frontend
// 1.32.9, the one ComfyUI 0.3.75 pins) ignore getMinHeight, and the canvas would get no height at all there.
function setOwnMinHeight(panel) {
  panel.root.style.minHeight = `${minHeight(panel) - 2 * MARGIN}px`;
}

function attachPanel(node) {
  const panel = new MatchPanel(node);
  panels.set(node, panel);
  const widget = node.addDOMWidget(WIDGET_NAME, "coat.matchPanel", panel.root, {
    serialize: false,
    hideOnZoom: false,
    margin: MARGIN,
    getMinHeight: () => minHeight(panel),
  });
  widget.serialize = false;
  setOwnMinHeight(panel);
  return panel;
}

function show(node, entry) {
  const panel = panelOf(node);
  if (!panel) return;
  panel.load(entry);
  setOwnMinHeight(panel);
  fitNode(node);
}

app.registerExtension({
  name: "coat.matchPanel",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!PANEL_NODES.has(nodeData?.name)) return;
    const proto = nodeType.prototype;

    const onNodeCreated = proto.onNodeCreated;
    proto.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      attachPanel(this);
      return r;
    };

    const onExecuted = proto.onExecuted;
    proto.onExecuted = function (message) {
      const r = onExecuted?.apply(this, arguments);
      const entry = message?.coat_matches?.[0];
      if (entry && typeof entry.id === "string" && ID_RE.test(entry.id)) {
        const { id, scales, batch, content, style } = entry;
        this.properties = this.properties || {};
        this.properties[RESULT_PROP] = { id, scales, batch, content, style };
        show(this, this.properties[RESULT_PROP]);
      }
      return r;
    };

    // A loaded workflow: show the saved result again (fetched anew; it 404s once the server forgot it).
    const onConfigure = proto.onConfigure;
    proto.onConfigure = function () {
      const r = onConfigure?.apply(this, arguments);
      const panel = panelOf(this);
      const saved = savedResult(this);
      if (panel && saved) {
        Object.assign(panel.view, this.properties?.[VIEW_PROP] || {});
        panel.threshold.value = String(panel.view.threshold);
        panel.thresholdText.textContent = Number(panel.view.threshold).toFixed(2);
        panel.heatBox.checked = Boolean(panel.view.heatmap);
        panel.linesBox.checked = panel.view.lines !== false;
        show(this, saved);
      }
      return r;
    };

    const onRemoved = proto.onRemoved;
    proto.onRemoved = function () {
      panelOf(this)?.dispose();
      return onRemoved?.apply(this, arguments);
    };
  },
});
