// DOM helpers. Every piece of trace text goes into the page as a text node: `h` never
// parses HTML, and only the attributes listed here can be set.
const ATTRS = new Set(["class", "href", "title", "type", "value", "name", "placeholder", "min", "max", "step",
  "rows", "id", "for", "start", "selected", "disabled", "open", "data-key", "data-kind", "aria-label", "target"]);

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) { el.addEventListener(name.slice(2), value); continue; }
    if (!ATTRS.has(name)) throw new Error(`attribute ${name} is not allowed`);
    if (name === "href" && !/^(#|\/files\/)/.test(value)) throw new Error(`link ${value} is not a page link`);
    el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }

export async function api(path, options) {
  const response = await fetch(path, options);
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return response.json();
}

export function num(x, digits = 3) {
  if (x === null || x === undefined) return "–";
  return Number(x).toFixed(digits).replace(/^-0\.0+$/, "0.000");
}

export function signed(x, digits = 3) {
  if (x === null || x === undefined) return "–";
  return (x > 0 ? "+" : "") + Number(x).toFixed(digits);
}

export function stat(label, value, digits = 3) {
  if (value === null || value === undefined) return null;
  const cls = value > 0 ? "stat pos" : value < 0 ? "stat neg" : "stat";
  return h("span", { class: cls, title: label }, `${label} ${signed(value, digits)}`);
}

export function emChip(em) {
  if (em === null || em === undefined) return null;
  return em ? h("span", { class: "chip good" }, "EM 1") : h("span", { class: "chip bad" }, "EM 0");
}

export function setStatus(text) { document.getElementById("status").textContent = text || ""; }

export function setCrumbs(items) {
  const nav = clear(document.getElementById("crumbs"));
  items.forEach(([label, href]) => nav.appendChild(href ? h("a", { href }, label) : h("span", {}, label)));
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

// A line chart of `series` ([{name, color, points: [[x, y]]}]) over one x axis.
export function lineChart(series, { width = 640, height = 200, yLabel = "" } = {}) {
  const pad = { l: 40, r: 12, t: 10, b: 24 };
  const xs = series.flatMap(d => d.points.map(p => p[0]));
  const ys = series.flatMap(d => d.points.map(p => p[1]));
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
  if (!xs.length) { svg.appendChild(s("text", { x: width / 2, y: height / 2, "text-anchor": "middle", fill: "#6b7483" }, "no metrics yet")); return svg; }
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  const y0 = Math.min(0, ...ys), y1 = Math.max(1, ...ys);
  const X = x => pad.l + (x - x0) / (x1 - x0) * (width - pad.l - pad.r);
  const Y = y => height - pad.b - (y - y0) / (y1 - y0) * (height - pad.t - pad.b);
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (y1 - y0) * i / 4;
    svg.appendChild(s("line", { x1: pad.l, x2: width - pad.r, y1: Y(y), y2: Y(y), stroke: "#eceff3" }));
    svg.appendChild(s("text", { x: pad.l - 6, y: Y(y) + 4, "text-anchor": "end", "font-size": 10.5, fill: "#8a93a2" }, y.toFixed(2)));
  }
  const ticks = Math.min(8, x1 - x0);
  for (let i = 0; i <= ticks; i++) {
    const x = Math.round(x0 + (x1 - x0) * i / ticks);
    svg.appendChild(s("text", { x: X(x), y: height - 6, "text-anchor": "middle", "font-size": 10.5, fill: "#8a93a2" }, String(x)));
  }
  if (yLabel) svg.appendChild(s("text", { x: width - pad.r, y: height - 6, "text-anchor": "end", "font-size": 10.5, fill: "#8a93a2" }, yLabel));
  for (const d of series) {
    if (!d.points.length) continue;
    const path = d.points.map((p, i) => `${i ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join("");
    svg.appendChild(s("path", { d: path, fill: "none", stroke: d.color, "stroke-width": 2 }));
    for (const p of d.points) svg.appendChild(s("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2.6, fill: d.color }));
  }
  return svg;
}
