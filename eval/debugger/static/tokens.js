// The tokens view (what was trained on) and the group view (a GRPO group side by side).
import { api, clear, emChip, h, num, setCrumbs, setStatus, signed } from "./dom.js";

// Sampled tokens are shaded by how unlikely the sampler found them: 1 - p, p = exp(logprob).
function shade(logprob) { return `rgba(234, 88, 12, ${(0.85 * (1 - Math.exp(logprob))).toFixed(3)})`; }

export async function tokens(main, key) {
  const t = await api(`/api/trace/${key}/tokens`);
  setCrumbs([["trajectory", `#/t/${key}`], ["tokens", null]]);
  setStatus("");
  clear(main);
  main.appendChild(h("div", { class: "head" }, h("h1", {}, t.question),
    h("div", { class: "links" }, h("a", { href: `#/t/${key}` }, "Steps"), h("a", { href: `#/t/${key}/group` }, "Group"))));
  main.appendChild(h("div", { class: "legend-row" },
    h("span", {}, h("b", {}, String(t.sampled)), " sampled tokens (trained on), shaded by the sampler's probability: ",
      h("span", { class: "scale" }), " unlikely → likely"),
    h("span", {}, h("span", { class: "tok inj" }, " injected "), ` ${t.injected} tokens the environment or a person put in (loss mask 0)`),
    h("span", {}, h("span", { class: "mark k-search" }, "search"), " a step starts")));
  if (!t.decoded) main.appendChild(h("div", { class: "notice" }, "No tokenizer found for this run: tokens show as ids (start the debugger with --tokenizer)."));
  for (const seg of t.segments) {
    main.appendChild(h("div", { class: "seg-head" }, h("b", {}, `Segment ${seg.index}`),
      h("span", { class: "muted" }, `${seg.context_tokens} context tokens, ${seg.tokens.length} response tokens`,
        seg.index > 0 ? " · a new context: the observation a judge dropped is gone from it" : "")));
    if (seg.context_text !== null) main.appendChild(h("details", { class: "context" }, h("summary", {}, "context"), h("pre", {}, seg.context_text)));
    const box = h("div", { class: "tokens", "data-kind": "segment" });
    const starts = new Map(seg.steps.map(s => [s.start, s]));
    seg.tokens.forEach(([id, text, mask, logprob], i) => {
      const step = starts.get(i);
      if (step) box.appendChild(h("span", { class: `mark k-${step.kind}`, title: `step ${step.index}` }, `${step.index} ${step.kind}`));
      const p = Math.exp(logprob);
      const tip = mask ? `id ${id} · logprob ${logprob.toFixed(3)} · p ${p.toFixed(3)} · sampled` : `id ${id} · injected (loss mask 0)`;
      const el = h("span", { class: mask ? "tok" : "tok inj", title: tip }, text);
      if (mask) el.style.backgroundColor = shade(logprob);
      box.appendChild(el);
    });
    main.appendChild(box);
  }
}

export async function group(main, key) {
  const g = await api(`/api/trace/${key}/group`);
  setCrumbs([["trajectory", `#/t/${key}`], ["group", null]]);
  setStatus("");
  clear(main);
  main.appendChild(h("div", { class: "head" }, h("div", {}, h("h1", {}, g.question),
    h("div", {}, h("span", { class: "muted" }, "gold: "), g.golden_answers.map(a => h("span", { class: "chip gold" }, a)),
      g.step !== null ? h("span", { class: "chip" }, `step ${g.step}`) : null,
      h("span", { class: "chip" }, `${g.samples.length} samples`),
      h("span", { class: "chip" }, g.shared_steps ? `all share the first ${g.shared_steps} step${g.shared_steps > 1 ? "s" : ""}` : "they part at the first step"))),
    h("div", { class: "links" }, h("a", { href: `#/t/${key}` }, "Steps"))));
  const best = Math.max(...g.samples.map(s => s.reward ?? -Infinity));
  const cols = g.samples.map(s => h("div", { class: s.reward === best && best > -Infinity ? "sample best" : "sample", "data-key": s.key },
    h("h3", {}, h("a", { href: `#/t/${s.key}` }, `sample ${s.sample}`), h("span", {}, emChip(s.em))),
    h("div", { class: "parts" }, h("span", {}, `reward ${num(s.reward)}`), h("span", {}, `adv ${signed(s.advantage)}`),
      h("span", {}, s.finish)),
    h("div", { class: "text" }, h("span", { class: "muted" }, "answer: "), h("b", {}, s.answer ?? "none")),
    h("ol", { start: 0 }, s.steps.map((st, i) => h("li", {
      class: [i < s.parts_at ? "shared" : "", i === s.parts_at ? "parting" : "", st.dropped ? "drop" : ""].join(" ").trim() || null,
      title: i < s.parts_at ? "the same as another sample" : i === s.parts_at ? "parts from the others here" : null },
      h("span", { class: `k` }, st.kind), h("span", { class: "t" }, st.text),
      i === s.parts_at ? h("span", { class: "tag" }, "parts here") : null)))));
  main.appendChild(h("div", { class: "group", id: "group" }, cols));
}
