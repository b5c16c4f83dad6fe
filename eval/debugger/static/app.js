// The page's router: #/ (overview, filters in the query), #/t/KEY, #/t/KEY/tokens, #/t/KEY/group.
import { clear, h } from "./dom.js";
import { overview } from "./overview.js";
import { group, tokens } from "./tokens.js";
import { trajectory } from "./trace.js";

const state = { runs: null, poll: null };

async function route() {
  if (state.poll) { clearInterval(state.poll); state.poll = null; }
  const main = document.getElementById("view");
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const parts = path.split("/").filter(Boolean);
  try {
    if (parts[0] === "t" && parts[2] === "tokens") await tokens(main, parts[1]);
    else if (parts[0] === "t" && parts[2] === "group") await group(main, parts[1]);
    else if (parts[0] === "t") await trajectory(main, parts[1], state);
    else await overview(main, new URLSearchParams(query || ""), state);
    document.body.dataset.ready = hash;
  } catch (error) {
    clear(main).appendChild(h("div", { class: "notice" }, `Could not show this view: ${error.message}`));
  }
}

window.addEventListener("hashchange", route);
route();
