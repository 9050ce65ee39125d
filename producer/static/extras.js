"use strict";
// sdq web page: the submit form's pipeline-specific parts — the inpaint mask, LoRA, ControlNet and the hires fix.

// Which pipelines take what (the server's pipeline table decides; these only show the fields).
const MASK_PIPELINES = ["inpaint"];
const CONTROLNET_PIPELINES = ["txt2img", "img2img", "inpaint"];
const HIRES_PIPELINES = ["txt2img"];
const LORA_PIPELINES = ["txt2img", "img2img", "inpaint"];

// "builtin:tiny-lora:0.8, other" -> [{name, scale}, {name}]: the part after the last colon is the
// scale when it is a number (as `sdq submit --lora` reads it).
function parseLoras(text) {
  return text.split(",").map((s) => s.trim()).filter(Boolean).map((entry) => {
    const cut = entry.lastIndexOf(":");
    const tail = cut > 0 ? entry.slice(cut + 1) : "";
    return tail !== "" && !Number.isNaN(Number(tail)) ? {name: entry.slice(0, cut), scale: Number(tail)} : {name: entry};
  });
}

const Extras = {
  init() {
    $("controlnet-on").addEventListener("change", Extras.sync);
    $("hires-on").addEventListener("change", Extras.sync);
  },

  // Show the fields the chosen pipeline takes.
  sync() {
    const pipeline = $("pipeline").value;
    $("mask-field").hidden = !MASK_PIPELINES.includes(pipeline);
    $("controlnet-set").hidden = !CONTROLNET_PIPELINES.includes(pipeline);
    $("hires-set").hidden = !HIRES_PIPELINES.includes(pipeline);
    $("lora-set").hidden = !LORA_PIPELINES.includes(pipeline);
    $("controlnet-fields").hidden = !$("controlnet-on").checked;
    $("hires-fields").hidden = !$("hires-on").checked;
  },

  async upload(file) {
    const form = new FormData();
    form.append("file", file);
    return (await Api.call("/v1/uploads", {method: "POST", body: form})).key;
  },

  // Add params.mask_image, params.controlnet and params.hires as the form asks (uploading images first).
  async add(p) {
    const pipeline = $("pipeline").value;
    const mask = $("mask-image").files[0];
    if (MASK_PIPELINES.includes(pipeline) && mask) p.mask_image = await Extras.upload(mask);
    const loras = parseLoras($("loras").value);
    if (LORA_PIPELINES.includes(pipeline) && loras.length) p.loras = loras;
    if (CONTROLNET_PIPELINES.includes(pipeline) && $("controlnet-on").checked) {
      const img = $("control-image").files[0];
      p.controlnet = {model: $("controlnet-model").value.trim() || undefined, scale: Submit.num("controlnet-scale"),
                      image: img ? await Extras.upload(img) : undefined};
    }
    if (HIRES_PIPELINES.includes(pipeline) && $("hires-on").checked) {
      p.hires = {scale: Submit.num("hires-scale"), strength: Submit.num("hires-strength"),
                 steps: Submit.num("hires-steps")};
    }
    for (const obj of [p.controlnet, p.hires]) {
      if (obj) for (const k of Object.keys(obj)) if (obj[k] === undefined) delete obj[k];
    }
    return p;
  },

  // A prompt file sends its settings in the query string, which has no room for these objects.
  checkFile(params) {
    for (const field of ["controlnet", "hires", "loras"]) {
      if (params[field]) {
        throw new ApiError(422, {field: `params.${field}`, message: `${field} needs prompts typed in the box, not a file`});
      }
    }
  },
};
