"use strict";
// sdq web page: the submit form.

const SCHEDULERS = ["pndm", "plms", "ddim", "euler", "euler_a", "dpmpp_2m", "lms", "ddpm", "heun", "unipc", "flow_euler"];
const SWEEP_KEYS = {
  "": "none", guidance_scale: "guidance", steps: "steps", scheduler: "scheduler", seed: "seed",
  width: "width", height: "height", strength: "strength", negative_prompt: "negative prompt",
};
const TEXT_SWEEP_KEYS = ["scheduler", "negative_prompt"];
const VIDEO_PIPELINES = ["txt2video", "img2video"];
const NO_INIT_PIPELINES = ["txt2img", "txt2video"];
const FILE_TYPES = {txt: "text/plain", csv: "text/csv", jsonl: "application/x-ndjson", ndjson: "application/x-ndjson"};

const Submit = {
  file: null, // {name, type, text} of a dropped .csv/.jsonl prompt file

  init() {
    for (const s of SCHEDULERS) $("scheduler").append(h("option", {value: s}, s));
    for (const sel of document.querySelectorAll(".sweep-key")) {
      for (const [k, label] of Object.entries(SWEEP_KEYS)) sel.append(h("option", {value: k}, label));
    }
    $("pipeline").addEventListener("change", Submit.syncPipeline);
    $("prompt-file").addEventListener("change", (e) => e.target.files[0] && Submit.takeFile(e.target.files[0]));
    $("file-clear").addEventListener("click", Submit.clearFile);
    const box = $("prompts");
    box.addEventListener("dragover", (e) => { e.preventDefault(); box.classList.add("drop"); });
    box.addEventListener("dragleave", () => box.classList.remove("drop"));
    box.addEventListener("drop", (e) => {
      e.preventDefault();
      box.classList.remove("drop");
      if (e.dataTransfer.files[0]) Submit.takeFile(e.dataTransfer.files[0]);
    });
    for (const inp of document.querySelectorAll(".sweep-values")) {
      inp.addEventListener("input", () => { if (inp.value.trim()) $("grid").checked = true; });
    }
    $("submit-form").addEventListener("submit", Submit.onSubmit);
    $("quote").addEventListener("click", Submit.onQuote);
    Extras.init();
    Submit.syncPipeline();
  },

  syncPipeline() {
    $("init-set").hidden = NO_INIT_PIPELINES.includes($("pipeline").value);
    $("video-set").hidden = !VIDEO_PIPELINES.includes($("pipeline").value);
    Extras.sync();
  },

  async takeFile(file) {
    const ext = file.name.split(".").pop().toLowerCase();
    const type = FILE_TYPES[ext];
    const text = await file.text();
    if (!type) {
      Submit.clearFile();
      $("file-note").textContent = `${file.name}: not a .txt, .csv or .jsonl file`;
      return;
    }
    if (ext === "txt") { // plain prompts: show them in the box, editable
      Submit.clearFile();
      $("prompts").value = text;
      $("file-note").textContent = `Loaded ${file.name} into the box`;
      return;
    }
    Submit.file = {name: file.name, type, text};
    $("prompts").disabled = true;
    $("file-clear").hidden = false;
    $("file-note").textContent = `Using ${file.name} (${text.split("\n").filter((l) => l.trim()).length} lines)`;
  },

  clearFile() {
    Submit.file = null;
    $("prompts").disabled = false;
    $("file-clear").hidden = true;
    $("file-note").textContent = "";
    $("prompt-file").value = "";
  },

  num(id) {
    const v = $(id).value.trim();
    return v === "" ? undefined : Number(v);
  },

  sweep() {
    const out = {};
    document.querySelectorAll(".sweep-row").forEach((row) => {
      const key = row.querySelector(".sweep-key").value;
      const raw = row.querySelector(".sweep-values").value;
      if (!key || !raw.trim()) return;
      out[key] = raw.split(",").map((s) => s.trim()).filter((s) => s !== "")
        .map((s) => (TEXT_SWEEP_KEYS.includes(key) || isNaN(Number(s)) ? s : Number(s)));
    });
    return out;
  },

  async params() {
    const p = {
      width: Submit.num("width"), height: Submit.num("height"), steps: Submit.num("steps"),
      guidance_scale: Submit.num("guidance"), seed: Submit.num("seed"), images_per_prompt: Submit.num("n"),
      negative_prompt: $("negative").value, scheduler: $("scheduler").value || undefined,
      grid: $("grid").checked || undefined,
    };
    if (VIDEO_PIPELINES.includes($("pipeline").value)) {
      p.frames = Submit.num("frames");
      p.fps = Submit.num("fps");
    }
    if (!NO_INIT_PIPELINES.includes($("pipeline").value)) {
      p.strength = Submit.num("strength");
      const img = $("init-image").files[0];
      if (img) {
        const form = new FormData();
        form.append("file", img);
        p.init_image = (await Api.call("/v1/uploads", {method: "POST", body: form})).key;
      }
    }
    await Extras.add(p);
    for (const k of Object.keys(p)) if (p[k] === undefined || p[k] === "") delete p[k];
    return p;
  },

  async send(dryRun = false) {
    const params = await Submit.params();
    const top = {model: $("model").value.trim(), pipeline: $("pipeline").value, priority: Submit.num("priority")};
    const sweep = Submit.sweep();
    if (Submit.file) { // the file goes as the body; job settings go in the query string
      if (Object.keys(sweep).length) throw new ApiError(422, {field: "sweep", message: "a sweep needs prompts typed in the box, not a file"});
      if (dryRun) throw new ApiError(422, {field: "prompts", message: "an estimate needs prompts typed in the box, not a file"});
      Extras.checkFile(params);
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries({...top, ...params})) if (v !== undefined) q.set(k, String(v));
      return Api.call(`/v1/jobs?${q}`, {method: "POST", body: Submit.file.text, headers: {"Content-Type": Submit.file.type}});
    }
    const prompts = $("prompts").value.split("\n").map((s) => s.trim()).filter((s) => s && !s.startsWith("#"));
    const body = {...top, prompts, params};
    if (Object.keys(sweep).length) body.sweep = sweep;
    if (dryRun) body.dry_run = true;
    return Api.call("/v1/jobs", {method: "POST", json: body});
  },

  async onSubmit(e) {
    e.preventDefault();
    const form = $("submit-form");
    FieldErrors.clear(form);
    $("generate").disabled = true;
    try {
      const job = await Submit.send();
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (err) {
      if (err instanceof ApiError) FieldErrors.show(form, err, $("submit-error"));
      else $("submit-error").textContent = `Could not submit: ${err.message}`;
    } finally {
      $("generate").disabled = false;
    }
  },

  // The server's quote for the form as it stands: who can take the job, how long, and any refusal.
  async onQuote() {
    const form = $("submit-form");
    const box = $("quote-box");
    FieldErrors.clear(form);
    $("quote").disabled = true;
    try {
      box.replaceChildren(...Submit.quoteLines(await Submit.send(true)).map((line) => h("p", {}, line)));
      box.hidden = false;
    } catch (err) {
      box.hidden = true;
      if (err instanceof ApiError) FieldErrors.show(form, err, $("submit-error"));
      else $("submit-error").textContent = `Could not estimate: ${err.message}`;
    } finally {
      $("quote").disabled = false;
    }
  },

  quoteLines(q) {
    const lines = [`${q.items} items, ${q.items_ahead} queued ahead` +
      (q.finish_in_s != null ? `; expected to finish in about ${Math.ceil(q.finish_in_s)} s` : "")];
    for (const queue of q.queues) {
      for (const w of queue.able_workers) lines.push(`Can run on ${w.name} (${w.device}, ${w.dtype}): ${w.seconds_per_item} s per image`);
      for (const w of queue.unable_workers) lines.push(`Not on ${w.name}: ${w.reasons.join("; ")}`);
    }
    if (!q.runnable_now) lines.push("No live worker can take it now: it would wait for a capable worker.");
    for (const r of q.refusals) lines.push(`Would be refused: ${r.message}`);
    return lines;
  },

  // Offer the models the caller may name (the model catalog), each with its family and where it is warm.
  async loadModels() {
    try {
      const {models} = await Api.call("/v1/models");
      $("models").replaceChildren(...models.map((m) => h("option", {value: m.id},
        [m.family_title || m.family, m.warm_on.length ? `warm on ${m.warm_on.join(", ")}` : ""].filter(Boolean).join(" · "))));
    } catch (_) { /* the list is a convenience; the field still takes any id */ }
  },
};
