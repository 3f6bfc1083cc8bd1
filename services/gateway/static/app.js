// The page's entry point: the API key form, the navigation, and the hash routes.
//   #/characters            every character            (characters.js)
//   #/characters/<id>       one character's shots      (characters.js)
//   #/compare               providers side by side     (compare.js)
//   #/evaluate[/<id>[/<shot>]]  human evaluation       (evaluate.js)

import { Unauthorised, apiKey } from "./api.js";
import { characterList, characterDetail } from "./characters.js";
import { comparison } from "./compare.js";
import { evaluation } from "./evaluate.js";
import { h } from "./dom.js";

const main = document.getElementById("view");
const forget = document.getElementById("forget-key");

const routes = [
  [/^#\/characters\/([\w-]+)$/, (id) => characterDetail(id)],
  [/^#\/compare$/, () => comparison()],
  [/^#\/evaluate(?:\/([\w-]+)(?:\/([\w-]+))?)?$/, (id, shot) => evaluation(id, shot)],
  [/^#\/characters$|^#?\/?$/, () => characterList()],
];

function keyForm(message) {
  const input = h("input", { id: "api-key", name: "api-key", type: "password", required: true, autocomplete: "off" });
  const form = h("form", { class: "key-form", "aria-labelledby": "key-title" },
    h("h1", { id: "key-title" }, "Sign in with an API key"),
    message ? h("p", { class: "error", role: "alert" }, message) : null,
    h("p", {}, "The key stays in this browser tab (session storage) and is sent as X-API-Key on each request."),
    h("label", { for: "api-key" }, "API key"),
    input,
    h("button", { type: "submit" }, "Open"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey.set(input.value.trim());
    render();
  });
  main.replaceChildren(form);
  input.focus();
}

function markNavigation(hash) {
  for (const link of document.querySelectorAll("nav a")) {
    const current = hash.startsWith(`#/${link.dataset.view}`) || (!hash.startsWith("#/") && link.dataset.view === "characters");
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function viewFor(hash) {
  for (const [pattern, make] of routes) {
    const match = hash.match(pattern);
    if (match) return () => make(...match.slice(1));
  }
  return () => h("p", {}, `No page at ${hash}.`);
}

let renders = 0; // a slow view must not replace the one the person has since moved to

async function render() {
  const ticket = ++renders;
  if (!apiKey.get()) {
    forget.hidden = true;
    keyForm();
    return;
  }
  forget.hidden = false;
  const hash = location.hash || "#/characters";
  markNavigation(hash);
  main.replaceChildren(h("p", { class: "loading", role: "status" }, "Loading…"));
  try {
    const content = await viewFor(hash)();
    if (ticket === renders) main.replaceChildren(content);
  } catch (error) {
    if (ticket !== renders) return;
    if (error instanceof Unauthorised) {
      apiKey.forget();
      forget.hidden = true;
      keyForm(`${error.message}: check the key and try again.`);
      return;
    }
    console.error(error);
    main.replaceChildren(h("p", { class: "error", role: "alert" }, `Could not load this view: ${error.message}`));
  }
}

forget.addEventListener("click", () => {
  apiKey.forget();
  render();
});
window.addEventListener("hashchange", render);
render();
