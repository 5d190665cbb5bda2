// The Video tab's prompt help: the words the model was trained on (`vocabulary` in /healthz) as clickable
// chips, and which typed words it does not know (those have no effect on the picture: the page says so).

import { el } from "./dom.js";

/** Vocabulary help for one model; `vocabulary` is `{group: [words]}`, `examples` its example prompts. */
export class PromptHelp {
  constructor(chipsEl, noteEl, input) {
    Object.assign(this, { chipsEl, noteEl, input });
    this.vocabulary = null;
    this.known = new Set();
  }

  /** Show the chips of a model (none when it publishes no vocabulary). */
  setModel(info) {
    this.vocabulary = (info && info.vocabulary) || null;
    this.chipsEl.replaceChildren();
    this.known = new Set();
    if (!this.vocabulary) { this.update(); return; }
    for (const words of Object.values(this.vocabulary)) for (const w of words) this.known.add(w);
    // the words that join the vocabulary in the example prompts ("a", "moving", "on", "background"…)
    for (const p of info.example_prompts || []) for (const w of words(p)) this.known.add(w);
    for (const [group, list] of Object.entries(this.vocabulary)) {
      this.chipsEl.append(el("span", { className: "group" }, `${group}:`));
      for (const word of list) {
        const chip = el("button", { type: "button", dataset: { word, group } }, word);
        chip.setAttribute("aria-pressed", "false");
        chip.addEventListener("click", () => this.useWord(group, word));
        this.chipsEl.append(chip);
      }
    }
    this.update();
  }

  /** Put `word` in the prompt: it replaces the word of the same group, or is added at the end. */
  useWord(group, word) {
    const others = new Set(this.vocabulary[group]);
    let replaced = false;
    const text = this.input.value.replace(/[A-Za-z]+/g, (w) => {
      if (!replaced && others.has(w.toLowerCase())) { replaced = true; return word; }
      return w;
    });
    this.input.value = replaced ? text : `${text.trim()} ${word}`.trim();
    this.update();
    this.input.dispatchEvent(new Event("input"));
  }

  /** Words of `text` the model does not know (empty when it publishes no vocabulary). */
  unknownWords(text) {
    if (!this.vocabulary) return [];
    return [...new Set(words(text).filter((w) => !this.known.has(w)))];
  }

  /** Refresh the chips' pressed state and the note under the prompt. */
  update() {
    const text = this.input.value;
    const present = new Set(words(text));
    for (const chip of this.chipsEl.querySelectorAll("button")) chip.setAttribute("aria-pressed", String(present.has(chip.dataset.word)));
    const unknown = this.unknownWords(text);
    this.noteEl.classList.toggle("warn", unknown.length > 0);
    if (!text.trim()) this.noteEl.textContent = "Empty prompt: the model shows its default scene.";
    else if (unknown.length) this.noteEl.textContent = `The model does not know ${quoteList(unknown)}: ${unknown.length > 1 ? "they are" : "it is"} ignored. It knows the words below.`;
    else this.noteEl.textContent = this.vocabulary ? "Words the model knows (click to use):" : "";
  }
}

export function words(text) {
  return (String(text).toLowerCase().match(/[a-z]+/g) || []);
}

export function quoteList(list) {
  return list.map((w) => `“${w}”`).join(", ");
}
