// The run overview: curves from metrics.jsonl, the run's figures, filters and the list of traces.
import { api, clear, emChip, h, lineChart, num, setCrumbs, setStatus, signed } from "./dom.js";

const PAGE = 50;
const FILTERS = ["origin", "step", "reward_min", "reward_max", "correct", "finish", "category", "hops", "q", "sort", "desc"];
const DEFAULTS = { origin: "run", sort: "position" };

export async function overview(main, params, state) {
  const data = await api("/api/runs");
  state.runs = data;
  const n = Number(params.get("run") || 0);
  const run = data.runs[n];
  if (!run) throw new Error(`no run ${n}`);
  setCrumbs([[run.name, null]]);
  clear(main);

  if (data.runs.length > 1) {
    main.appendChild(h("p", {}, "Runs: ", data.runs.map((r, i) => i === n ? h("b", {}, r.name, " ")
      : h("a", { href: `#/?run=${i}` }, r.name, " "))));
  }
  const figures = h("div", { class: "figures" },
    h("div", { class: "figure" }, h("b", { id: "count" }, run.traces.toLocaleString()), h("small", {}, "traces")),
    h("div", { class: "figure" }, h("b", {}, String(run.forks)), h("small", {}, "forks")),
    Object.entries(run.summary).map(([k, v]) => h("div", { class: "figure" },
      h("b", {}, Number.isInteger(v) ? v.toLocaleString() : num(v)), h("small", {}, k.replaceAll("_", " ")))),
    run.files.length ? h("div", { class: "figure" }, h("small", {}, "files"),
      h("div", {}, run.files.map(f => h("a", { href: `/files/${n}/${encodeURIComponent(f)}`, target: "_blank" }, f, " ")))) : null);
  const curves = run.curves.filter(r => r.step > 0);
  const chart = h("div", { class: "panel chart" },
    h("div", { class: "legend" }, "per training step",
      h("span", { class: "swatch", title: "reward", "aria-label": "reward" }), "reward",
      h("span", { class: "swatch", "aria-label": "EM" }), "EM"),
    lineChart([
      { name: "reward", color: "#2f6fdf", points: curves.filter(r => r.reward !== undefined).map(r => [r.step, r.reward]) },
      { name: "EM", color: "#1f8a4c", points: curves.filter(r => r.em !== undefined).map(r => [r.step, r.em]) },
    ]));
  const [rewardSwatch, emSwatch] = chart.querySelectorAll(".swatch");
  rewardSwatch.style.background = "#2f6fdf";
  emSwatch.style.background = "#1f8a4c";
  main.appendChild(h("div", { class: "row" }, curves.length ? chart : null, h("div", {}, figures)));
  if (run.bad_lines.length) main.appendChild(h("div", { class: "notice" }, "Lines skipped: ", run.bad_lines.join("; ")));

  const form = filterForm(run, params, n);
  main.appendChild(form);
  const table = h("div", { id: "list" });
  main.appendChild(table);
  await loadList(table, n, params);
  setStatus(run.indexing ? `indexing… ${Math.round(100 * run.indexed_bytes / Math.max(run.size, 1))}%` : "");
  state.poll = setInterval(async () => {
    const fresh = await api("/api/runs").catch(() => null);
    if (!fresh || !document.getElementById("count")) return;
    const r = fresh.runs[n];
    document.getElementById("count").textContent = r.traces.toLocaleString();
    setStatus(r.indexing ? `indexing… ${Math.round(100 * r.indexed_bytes / Math.max(r.size, 1))}%` : `following · ${r.traces.toLocaleString()} traces`);
    if (r.traces !== run.traces && Number(params.get("offset") || 0) === 0) {
      run.traces = r.traces;
      await loadList(document.getElementById("list"), n, params);
    }
  }, 2000);
}

function select(name, label, options, current) {
  return h("label", {}, label, h("select", { name },
    options.map(([value, text]) => h("option", { value, selected: String(value) === String(current ?? "") }, text))));
}

function filterForm(run, params, n) {
  const f = run.facets;
  const get = k => params.get(k) ?? "";
  const form = h("form", { class: "filters", onsubmit: e => { e.preventDefault(); apply(form, n); } },
    select("origin", "traces", [["run", "the run's"], ["forks", "forks"]], get("origin") || "run"),
    select("step", "training step", [["", "any"], ...f.steps.map(s => [s, `step ${s}`])], get("step")),
    h("label", {}, "reward ≥", h("input", { type: "number", name: "reward_min", step: "any", value: get("reward_min") })),
    h("label", {}, "reward ≤", h("input", { type: "number", name: "reward_max", step: "any", value: get("reward_max") })),
    select("correct", "answer", [["", "any"], ["true", "correct"], ["false", "wrong"]], get("correct")),
    select("finish", "finish", [["", "any"], ...f.finishes.map(x => [x, x])], get("finish")),
    select("category", "error category", [["", "any"], ...f.categories.map(x => [x, x.replaceAll("_", " ")])], get("category")),
    select("hops", "hops", [["", "any"], ...f.hops.map(x => [x, `${x}-hop`])], get("hops")),
    h("label", {}, "search questions, queries, answers", h("input", { class: "search", name: "q", value: get("q"), placeholder: "words…" })),
    select("sort", "sort by", [["position", "file order"], ["reward", "reward"], ["advantage", "advantage"], ["step", "step"]], get("sort") || "position"),
    select("desc", "order", [["", "ascending"], ["true", "descending"]], get("desc")),
    h("button", { class: "primary", type: "submit" }, "Filter"),
    h("button", { type: "button", onclick: () => { location.hash = `#/?run=${n}`; } }, "Clear"));
  form.addEventListener("change", () => apply(form, n));
  return form;
}

function apply(form, n) {
  const params = new URLSearchParams({ run: n });
  for (const name of FILTERS) {
    const el = form.elements[name];
    if (el && el.value !== "" && el.value !== DEFAULTS[name]) params.set(name, el.value);
  }
  location.hash = `#/?${params}`;
}

async function loadList(box, n, params) {
  const query = new URLSearchParams({ limit: PAGE, offset: params.get("offset") || 0 });
  for (const name of FILTERS) if (params.get(name)) query.set(name, params.get(name));
  const page = await api(`/api/runs/${n}/traces?${query}`);
  clear(box);
  const head = h("tr", {}, ["#", "step", "question", "answer", "EM", "reward", "advantage", "finish", "searches", "forks"]
    .map((c, i) => h("th", { class: i >= 4 && i !== 7 ? "num" : null }, c)));
  const rows = page.rows.map(r => h("tr", { class: "trace", "data-key": r.key, onclick: () => { location.hash = `#/t/${r.key}`; } },
    h("td", { class: "num muted" }, String(r.position)),
    h("td", { class: "num" }, r.step ?? "–"),
    h("td", { class: "q" }, r.question),
    h("td", {}, r.answer ?? h("span", { class: "muted" }, "no answer")),
    h("td", { class: "num" }, emChip(r.em)),
    h("td", { class: "num" }, num(r.reward)),
    h("td", { class: "num" }, signed(r.advantage)),
    h("td", {}, h("span", { class: r.finish === "answered" ? "chip" : "chip warn" }, r.finish)),
    h("td", { class: "num" }, String(r.searches)),
    h("td", { class: "num" }, r.forks ? String(r.forks) : "")));
  box.appendChild(h("table", { class: "list" }, h("thead", {}, head), h("tbody", {}, rows)));
  const offset = page.offset;
  const go = o => { const p = new URLSearchParams(params); p.set("offset", o); location.hash = `#/?${p}`; };
  box.appendChild(h("div", { class: "pager" },
    h("button", { type: "button", disabled: offset === 0, onclick: () => go(Math.max(0, offset - PAGE)) }, "‹ previous"),
    h("span", { id: "shown" }, page.total ? `${offset + 1}–${offset + page.rows.length} of ${page.total.toLocaleString()}` : "no trace matches"),
    h("button", { type: "button", disabled: offset + PAGE >= page.total, onclick: () => go(offset + PAGE) }, "next ›"),
    page.indexing ? h("span", {}, `(${page.indexed.toLocaleString()} indexed so far)`) : null));
}
