// The trajectory view: the question, one card per step with its rewards, and forking.
import { api, clear, emChip, h, num, setCrumbs, setStatus, signed, stat } from "./dom.js";

export async function trajectory(main, key, state) {
  const t = await api(`/api/trace/${key}`);
  const runs = state.runs || await api("/api/runs");
  state.runs = runs;
  const runNo = key.split(".")[0];
  setCrumbs([[t.run, `#/?run=${runNo}`], [t.id, null]]);
  setStatus("");
  clear(main);
  const links = h("div", { class: "links" },
    h("a", { href: `#/t/${key}/tokens` }, "Tokens"),
    t.group_size > 1 ? h("a", { href: `#/t/${key}/group` }, `Group (${t.group_size})`) : null,
    t.parent_key ? h("a", { href: `#/t/${t.parent_key}` }, "↑ Parent") : null);
  main.appendChild(h("div", { class: "head" }, h("div", {},
    h("h1", { id: "question" }, t.question),
    h("div", {}, h("span", { class: "muted" }, "gold: "), t.golden_answers.map(a => h("span", { class: "chip gold" }, a)),
      t.hops ? h("span", { class: "chip" }, `${t.hops}-hop`) : null, t.type ? h("span", { class: "chip" }, t.type) : null)), links));
  main.appendChild(h("div", { class: "parts", id: "outcome" },
    h("span", {}, `finish ${t.finish}`), t.answer !== null ? h("span", {}, `answer “${t.answer}”`) : null,
    t.em !== null ? h("span", {}, `EM ${t.em}`) : null, t.f1 !== null ? h("span", {}, `F1 ${num(t.f1, 2)}`) : null,
    t.category ? h("span", {}, t.category.replaceAll("_", " ")) : null,
    t.reward !== null ? h("span", {}, `reward ${num(t.reward)}`) : null,
    t.advantage !== null ? h("span", {}, `advantage ${signed(t.advantage)}`) : null,
    t.step !== null ? h("span", {}, `step ${t.step}`) : null, h("span", {}, `group ${t.group} · sample ${t.sample}`),
    t.policy ? h("span", {}, `policy ${t.policy}`) : null));
  if (Object.keys(t.rewards).length) {
    main.appendChild(h("div", { class: "parts", id: "rewards" }, h("b", { class: "muted" }, "reward parts"),
      Object.entries(t.rewards).map(([k, v]) => h("span", {}, `${k} ${num(v)}`))));
  }
  if (t.fork) {
    main.appendChild(h("div", { class: "notice" }, `A fork of `, h("a", { href: `#/t/${t.parent_key}` }, t.parent),
      ` at step ${t.fork.step} (${t.fork.edit} edited): the steps from there on are the continuation.`));
  }
  if (t.children.length) {
    main.appendChild(h("div", { class: "branches" }, h("b", { class: "muted" }, "Branches: "),
      t.children.map(c => h("a", { class: "chip edit", href: `#/t/${c.key}` }, `step ${c.fork_step} → ${c.answer ?? "no answer"}`))));
  }
  const cards = h("div", { class: "cards", id: "cards" });
  const firstNew = t.fork ? t.fork.step + (t.fork.edit === "message" ? 1 : 0) : -1;
  for (const card of t.cards) {
    if (card.index === firstNew) cards.appendChild(h("div", { class: "fork-line" }, `forked here: ${t.fork.edit} edited`));
    const el = stepCard(card, { key, runs, forkable: true });
    if (card.index < firstNew) el.classList.add("inherited");
    cards.appendChild(el);
  }
  main.appendChild(cards);
}

export function stepCard(c, ctx) {
  const el = h("div", { class: `card k-${c.kind}${c.dropped ? " dropped" : ""}`, "data-kind": c.kind });
  const top = h("div", { class: "card-top" },
    h("span", { class: "kind" }, `${c.index} · ${c.kind}`),
    c.edited ? h("span", { class: "chip edit" }, "edited") : null,
    c.dropped ? h("span", { class: "chip warn" }, "dropped by the judge") : null,
    h("span", { class: "stats" }, stat("reward", c.reward), stat("adv", c.advantage),
      ctx.forkable ? h("button", { class: "forkbtn", type: "button", onclick: () => toggleFork(el, c, ctx) }, "Fork here") : null));
  el.appendChild(top);
  if (c.kind === "search") {
    el.appendChild(h("div", { class: "text" }, h("span", { class: "query" }, c.text)));
    if (c.error) el.appendChild(h("div", { class: "err" }, c.error));
    el.appendChild(h("ol", { class: "passages" }, (c.passages || []).map((p, i) => h("li", { class: p.gold ? "passage gold" : "passage" },
      h("span", { class: "title" }, `${i + 1}. ${p.title}`), h("span", { class: "meta" }, `${p.id}${p.score !== null ? ` · ${num(p.score, 2)}` : ""}`),
      p.gold ? h("span", { class: "chip gold" }, "gold") : null, h("div", { class: "body" }, p.text)))));
  } else if (c.kind === "judge") {
    const right = c.ideal ? c.ideal === c.text : null;
    el.appendChild(h("div", { class: "text" }, h("span", { class: "verdict" }, c.text),
      c.ideal ? h("span", { class: right ? "chip good" : "chip bad" }, ` ideal: ${c.ideal} ${right ? "✓" : "✗"}`) : null));
  } else if (c.kind === "answer") {
    el.appendChild(h("div", { class: "text" }, h("b", {}, c.text), " ", emChip(c.em),
      c.f1 !== undefined ? h("span", { class: "chip" }, `F1 ${num(c.f1, 2)}`) : null));
  } else if (c.kind === "invalid") {
    el.appendChild(h("div", { class: "err" }, c.error || "invalid action"));
    el.appendChild(h("pre", { class: "raw" }, c.text));
  } else {
    el.appendChild(h("div", { class: "text" }, c.text));
  }
  return el;
}

function editsFor(c) {
  const edits = [["message", "add a user message after this step"], ["text", "replace the agent's output here"]];
  if (c.kind === "search") edits.unshift(["query", "edit the query"], ["passages", "edit the returned passages"]);
  return edits;
}

function initialText(edit, c) {
  if (edit === "query") return c.text;
  if (edit === "text") return c.kind === "think" ? `<think> ${c.text} </think>` : c.kind === "invalid" ? c.text : `<${c.kind}> ${c.text} </${c.kind}>`;
  return "";
}

function toggleFork(cardEl, c, ctx) {
  const open = cardEl.querySelector("form.fork");
  if (open) { open.remove(); return; }
  const { runs } = ctx;
  const editSel = h("select", { name: "edit" }, editsFor(c).map(([v, t]) => h("option", { value: v }, t)));
  const text = h("textarea", { name: "text", rows: 2 });
  const passages = h("div", { class: "passage-edits" });
  const refill = () => {
    text.value = initialText(editSel.value, c);
    text.hidden = editSel.value === "passages";
    clear(passages);
    if (editSel.value === "passages") {
      for (const p of c.passages || []) {
        passages.appendChild(h("div", { class: "passage" }, h("input", { name: "ptitle", value: p.title, "aria-label": "title" }),
          h("input", { name: "pid", type: "hidden", value: p.id }), h("textarea", { name: "ptext", rows: 2 })));
        passages.lastChild.querySelector("textarea").value = p.text;
      }
    }
  };
  const policy = h("select", { name: "policy" }, runs.policies.map(p => h("option", { value: p }, p)));
  const retriever = h("select", { name: "retriever" }, h("option", { value: "" }, "none"),
    runs.retrievers.map((r, i) => h("option", { value: r, selected: i === 0 }, r)));
  const temperature = h("input", { type: "number", name: "temperature", min: 0, max: 2, step: 0.1, value: 0 });
  const stream = h("div", { class: "stream" });
  const go = h("button", { class: "primary", type: "submit", disabled: !runs.policies.length }, "Continue from here");
  const form = h("form", { class: "fork", onsubmit: e => { e.preventDefault(); runFork(form, c, ctx, stream, go); } },
    h("div", { class: "opts" }, h("label", {}, "edit", editSel), h("label", {}, "policy", policy),
      h("label", {}, "retriever", retriever), h("label", {}, "temperature", temperature), go),
    runs.policies.length ? null : h("div", { class: "notice" }, "No policy to continue with: start the debugger with --policy NAME=SPEC."),
    text, passages, stream);
  editSel.addEventListener("change", refill);
  refill();
  cardEl.appendChild(form);
  text.focus();
}

async function runFork(form, c, ctx, stream, button) {
  const edit = form.elements.edit.value;
  const body = { key: ctx.key, step: c.index, edit, policy: form.elements.policy.value,
    retriever: form.elements.retriever.value, temperature: Number(form.elements.temperature.value || 0) };
  if (edit === "passages") {
    body.passages = [...form.querySelectorAll(".passage-edits .passage")].map(p => ({
      id: p.querySelector("[name=pid]").value, title: p.querySelector("[name=ptitle]").value, text: p.querySelector("[name=ptext]").value }));
  } else {
    body.text = form.elements.text.value;
  }
  clear(stream);
  button.disabled = true;
  const note = h("div", { class: "note" }, "starting…");
  stream.appendChild(note);
  try {
    const response = await fetch("/api/fork", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    if (!response.ok) {
      const detail = (await response.json().catch(() => ({}))).detail;
      throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail || response.statusText));
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const event = JSON.parse(buffer.slice(0, nl));
        buffer = buffer.slice(nl + 1);
        if (event.event === "status") note.textContent = event.message;
        if (event.event === "step") {
          const card = stepCard(event.card, { forkable: false });
          card.classList.add("new");
          stream.insertBefore(card, note);
        }
        if (event.event === "error") { note.textContent = `error: ${event.message}`; note.classList.add("err"); }
        if (event.event === "done") {
          clear(note);
          note.append(`finished (${event.finish}), answer “${event.answer ?? "none"}”${event.em !== null ? `, EM ${event.em}` : ""} · saved as `,
            h("a", { href: `#/t/${event.key}`, id: "fork-link" }, event.id));
        }
      }
    }
  } catch (error) {
    note.textContent = `error: ${error.message}`;
    note.classList.add("err");
  } finally {
    button.disabled = false;
  }
}
