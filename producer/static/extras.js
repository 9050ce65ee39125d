"use strict";
// sdq web page: the submit form's pipeline-specific parts — the inpaint mask, and the request options, whose
// fieldsets the server renders from its option table (producer/form.py: data-option, data-pipelines, inputs).

// Which pipelines take the mask (the server's pipeline table decides; this only shows the field).
const MASK_PIPELINES = ["inpaint"];

// "builtin:tiny-x:0.8, other" -> [{name, scale}, {name}] for keys ["name", "scale"]: the part after the
// last colon is the number when it is one (as the CLI's list flags read it).
function parseList(text, keys) {
  const [textKey, numKey] = keys;
  return text.split(",").map((s) => s.trim()).filter(Boolean).map((entry) => {
    const cut = entry.lastIndexOf(":");
    const tail = cut > 0 ? entry.slice(cut + 1) : "";
    return tail !== "" && !Number.isNaN(Number(tail)) ? {[textKey]: entry.slice(0, cut), [numKey]: Number(tail)}
      : {[textKey]: entry};
  });
}

const optionSets = () => Array.from(document.querySelectorAll("fieldset[data-option]"));
const takes = (set, pipeline) => set.dataset.pipelines.split(" ").includes(pipeline);

const Extras = {
  init() {
    for (const box of document.querySelectorAll("fieldset[data-option] input[data-toggle]")) {
      box.addEventListener("change", Extras.sync);
    }
  },

  // Show the fields the chosen pipeline takes.
  sync() {
    const pipeline = $("pipeline").value;
    $("mask-field").hidden = !MASK_PIPELINES.includes(pipeline);
    for (const set of optionSets()) {
      set.hidden = !takes(set, pipeline);
      const box = set.querySelector("input[data-toggle]");
      if (box) set.querySelector("[data-fields]").hidden = !box.checked;
    }
  },

  async upload(file) {
    const form = new FormData();
    form.append("file", file);
    return (await Api.call("/v1/uploads", {method: "POST", body: form})).key;
  },

  // One option's object from its inputs (files uploaded first; empty inputs left out).
  async value(set) {
    const obj = {};
    for (const input of set.querySelectorAll("input[data-key]")) {
      const kind = input.dataset.kind;
      let v;
      if (kind === "file") v = input.files[0] ? await Extras.upload(input.files[0]) : undefined;
      else if (kind === "number") v = input.value.trim() === "" ? undefined : Number(input.value.trim());
      else v = input.value.trim() || undefined;
      if (v !== undefined) obj[input.dataset.key] = v;
    }
    return obj;
  },

  // Add params.mask_image and every request option the form asks for (uploading images first).
  async add(p) {
    const pipeline = $("pipeline").value;
    const mask = $("mask-image").files[0];
    if (MASK_PIPELINES.includes(pipeline) && mask) p.mask_image = await Extras.upload(mask);
    for (const set of optionSets()) {
      if (!takes(set, pipeline)) continue;
      const name = set.dataset.option;
      const list = set.querySelector("input[data-list]");
      if (list) {
        const entries = parseList(list.value, list.dataset.list.split(","));
        if (entries.length) p[name] = entries;
      } else if (set.querySelector("input[data-toggle]").checked) {
        p[name] = await Extras.value(set);
      }
    }
    return p;
  },

  // A prompt file sends its settings in the query string, which has no room for these objects.
  checkFile(params) {
    for (const field of optionSets().map((set) => set.dataset.option)) {
      if (params[field]) {
        throw new ApiError(422, {field: `params.${field}`, message: `${field} needs prompts typed in the box, not a file`});
      }
    }
  },
};
