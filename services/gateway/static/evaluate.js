// Human evaluation: a rater sees the references and one shot and answers "same character?";
// below, how raters agree with each other and with the automatic verdict, and the shots to review.

import { getJson, picture, postJson } from "./api.js";
import { fixed, h, percent } from "./dom.js";
import { referenceStrip } from "./characters.js";

const RATER = "likeness.rater";

function agreementPanel(characterId, jumpTo) {
  const panel = h("section", { class: "agreement", "aria-labelledby": "agreement-title", "aria-live": "polite" });
  async function refresh() {
    const e = await getJson("/v1/evaluation", { character_id: characterId });
    const figure = (term, value) => [h("dt", {}, term), h("dd", {}, value)];
    panel.replaceChildren(
      h("h2", { id: "agreement-title" }, "Agreement"),
      h("dl", { class: "figures wide" },
        figure("shots rated", String(e.shots)),
        figure("votes", String(e.votes)),
        figure("raters", String(e.raters)),
        figure("Fleiss' kappa (raters)", fixed(e.fleiss_kappa, 2)),
        figure("pairwise agreement", percent(e.pairwise_agreement)),
        figure("agreement with the verdict", percent(e.machine_agreement)),
        figure("Cohen's kappa (verdict)", fixed(e.machine_kappa, 2))),
      h("h3", {}, `To review (${e.disagreements.length})`),
      e.disagreements.length
        ? h("ul", { class: "disagreements" }, e.disagreements.map((d) => h("li", {},
          h("button", { type: "button", class: "link", onclick: () => jumpTo(d.shot_id) }, `shot ${d.shot_id.slice(0, 8)}`),
          `: ${d.why}. Raters: `,
          Object.entries(d.votes).map(([rater, answer]) => `${rater} ${answer}`).join(", "),
          `; humans ${d.human ?? "–"}, machine ${d.machine ?? "–"} (verdict ${d.verdict ?? "–"})`)))
        : h("p", {}, "No disagreements."));
  }
  return { panel, refresh };
}

export async function evaluation(characterId, shotId) {
  const { characters } = await getJson("/v1/characters", { limit: 100 });
  if (!characters.length) return h("p", {}, "No characters to rate yet.");
  const chosen = characters.find((c) => c.character_id === characterId) ?? characters[0];
  const character = await getJson(`/v1/characters/${encodeURIComponent(chosen.character_id)}`);
  const shots = character.shots.filter((shot) => shot.image);
  let index = 0;

  const picker = h("select", {
    id: "eval-character",
    onchange: () => { location.hash = `#/evaluate/${encodeURIComponent(picker.value)}`; },
  }, characters.map((c) => h("option", { value: c.character_id, selected: c.character_id === chosen.character_id },
    `${c.name} (${c.provider}, ${c.created_at.slice(0, 10)})`)));
  const rater = h("input", {
    id: "rater", name: "rater", required: true, maxlength: 64, autocomplete: "nickname",
    pattern: "[A-Za-z0-9][A-Za-z0-9 ._@\\-]*", value: sessionStorage.getItem(RATER) ?? "",
  });
  const stage = h("div", { class: "stage" });
  const progress = h("p", { class: "meta" });
  const status = h("p", { class: "count", role: "status" });
  const { panel, refresh } = agreementPanel(character.character_id, (shotId) => {
    const found = shots.findIndex((shot) => shot.shot_id === shotId);
    if (found >= 0) show(found);
  });

  function show(next) {
    index = (next + shots.length) % shots.length;
    const shot = shots[index];
    progress.textContent = `Shot ${index + 1} of ${shots.length} · ${shot.params.scenario ?? "unspecified"}`;
    stage.replaceChildren(
      h("figure", {}, referenceStrip(character.references, "refs refs-large"), h("figcaption", {}, "References")),
      h("figure", {}, picture(shot.image, `Shot ${index + 1}: ${shot.params.prompt}`, "shot"),
        h("figcaption", {}, shot.params.prompt)));
  }

  const form = h("form", { class: "vote", "aria-label": "Same character?" },
    h("p", { class: "question" }, "Is the shot the same character as the references?"),
    h("div", { class: "answers" },
      h("button", { type: "submit", name: "answer", value: "yes", class: "yes" }, "Yes"),
      h("button", { type: "submit", name: "answer", value: "no", class: "no" }, "No"),
      h("button", { type: "submit", name: "answer", value: "unsure", class: "unsure" }, "Unsure"),
      h("button", { type: "button", class: "quiet", onclick: () => show(index + 1) }, "Skip to next shot")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const answer = event.submitter?.value;
    const shot = shots[index];
    if (!rater.reportValidity() || !answer) return;
    sessionStorage.setItem(RATER, rater.value);
    try {
      await postJson(`/v1/shots/${encodeURIComponent(shot.shot_id)}/votes`, { rater: rater.value, answer });
      status.textContent = `Recorded: ${rater.value} said ${answer} for shot ${index + 1}.`;
      show(index + 1);
      setTimeout(() => refresh().catch(() => {}), 1000); // storage records the vote asynchronously
    } catch (error) {
      status.textContent = `Not recorded: ${error.message}`;
    }
  });

  if (!shots.length) return h("p", {}, `${character.name} has no shot images to rate yet.`);
  show(Math.max(0, shots.findIndex((shot) => shot.shot_id === shotId)));
  await refresh();
  return h("section", { "aria-labelledby": "evaluate-title" },
    h("h1", { id: "evaluate-title" }, "Same character?"),
    h("p", {}, "Look at the references and the shot, and answer. The automatic verdict is hidden while you rate."),
    h("div", { class: "filters" },
      h("div", { class: "field" }, h("label", { for: "rater" }, "Your name"), rater),
      h("div", { class: "field" }, h("label", { for: "eval-character" }, "Character"), picker)),
    progress, stage, form, status, panel);
}
