"use strict";
// sdq web page: the Jobs list, one Job (live over SSE), and the Fleet.

const POLL_MS = 2000;
const GALLERY_PAGE = 100;
const TERMINAL = ["succeeded", "failed", "cancelled"];
const PREVIEW_URL = /^data:image\/jpeg;base64,[A-Za-z0-9+/=]+$/; // an item.preview image, inline

function stateBadge(state) {
  return h("span", {className: `state state-${String(state).replace(/[^a-z]/g, "")}`}, state);
}

function progressCell(p, label) {
  return h("span", {className: "progress-line"},
    h("progress", {max: 1, value: p || 0, "aria-label": label}), " ", pct(p));
}

// ---------------------------------------------------------------- Jobs
const PROMPT_CHARS = 60;

const JobsPage = {
  offset: 0, limit: 20, timer: null,
  prompts: new Map(), // job id -> its first prompt (never changes; read once per job)

  enter() { JobsPage.refresh(); JobsPage.timer = setInterval(JobsPage.refresh, POLL_MS); },
  leave() { clearInterval(JobsPage.timer); },

  init() {
    $("jobs-prev").addEventListener("click", () => { JobsPage.offset = Math.max(0, JobsPage.offset - JobsPage.limit); JobsPage.refresh(); });
    $("jobs-next").addEventListener("click", () => { JobsPage.offset += JobsPage.limit; JobsPage.refresh(); });
  },

  // The listing carries no items: each job's first prompt is read once from its first item.
  async firstPrompts(jobs) {
    await Promise.all(jobs.filter((j) => !JobsPage.prompts.has(j.id)).map(async (j) => {
      try {
        const doc = await Api.call(`/v1/jobs/${encodeURIComponent(j.id)}?limit=1`);
        JobsPage.prompts.set(j.id, doc.items && doc.items.length ? doc.items[0].prompt || "" : "");
      } catch (_) { /* shown as unknown; asked again on the next refresh */ }
    }));
  },

  row(j) {
    const p = j.params || {};
    const prompt = JobsPage.prompts.get(j.id);
    const size = p.width && p.height ? `${p.width}×${p.height}` : "";
    return h("tr", {},
      h("td", {}, h("a", {href: `#/jobs/${encodeURIComponent(j.id)}`, className: "mono"}, short(j.id))),
      h("td", {className: "prompt-cell", title: prompt || ""},
        prompt ? truncate(prompt, PROMPT_CHARS) : h("span", {className: "muted"}, prompt === undefined ? "…" : "–")),
      h("td", {className: "model-cell"}, j.model || "–", h("br"),
        h("span", {className: "muted small"}, [j.pipeline, size].filter(Boolean).join(" · "))),
      h("td", {}, stateBadge(j.state)),
      h("td", {}, progressCell(j.progress, `Progress of job ${short(j.id)}`)),
      h("td", {}, `${j.counts.succeeded}/${j.n_items}`, j.counts.failed ? ` (${j.counts.failed} failed)` : ""),
      h("td", {}, TERMINAL.includes(j.state) ? "–" : fmtSeconds(j.eta_seconds)),
      h("td", {}, fmtTime(j.created_at)));
  },

  async refresh() {
    try {
      const doc = await Api.call(`/v1/jobs?offset=${JobsPage.offset}&limit=${JobsPage.limit}`);
      await JobsPage.firstPrompts(doc.jobs);
      $("jobs-error").textContent = "";
      $("jobs-body").replaceChildren(...doc.jobs.map(JobsPage.row));
      if (!doc.jobs.length) $("jobs-body").append(h("tr", {}, h("td", {colSpan: 8, className: "muted"}, "No jobs yet.")));
      const end = Math.min(doc.total, JobsPage.offset + doc.jobs.length);
      $("jobs-range").textContent = doc.total ? `${JobsPage.offset + 1}–${end} of ${doc.total}` : "";
      $("jobs-prev").disabled = JobsPage.offset === 0;
      $("jobs-next").disabled = end >= doc.total;
    } catch (err) { $("jobs-error").textContent = err.message; }
  },
};

// ---------------------------------------------------------------- One job
const JobPage = {
  id: null, job: null, offset: 0, items: [], abort: null, pending: null, statusPending: null,
  eventsSeen: {}, // event name -> how many arrived over the stream (shown to tests and curious users)

  init() {
    $("job-cancel").addEventListener("click", JobPage.cancel);
    $("job-retry").addEventListener("click", JobPage.retry);
    $("job-download").addEventListener("click", JobPage.download);
    $("gallery-prev").addEventListener("click", () => JobPage.page(-1));
    $("gallery-next").addEventListener("click", () => JobPage.page(1));
  },

  enter(id) {
    JobPage.id = id;
    JobPage.offset = 0;
    JobPage.job = null;
    JobPage.gridTries = 0;
    JobPage.eventsSeen = {};
    $("job-title").textContent = `Job ${short(id)}`;
    $("job-title").title = id;
    $("job-error").textContent = "";
    $("gallery").replaceChildren();
    $("grid-section").hidden = true;
    $("job-download").href = `/v1/jobs/${encodeURIComponent(id)}/download.zip`;
    JobPage.load().then(JobPage.listen);
  },

  leave() {
    clearTimeout(JobPage.pending);
    if (JobPage.abort) JobPage.abort.abort();
    JobPage.abort = null;
    JobPage.id = null;
  },

  async load() {
    const id = JobPage.id;
    try {
      const doc = await Api.call(`/v1/jobs/${encodeURIComponent(id)}?offset=${JobPage.offset}&limit=${GALLERY_PAGE}`);
      if (id !== JobPage.id) return;
      JobPage.job = doc;
      JobPage.items = doc.items;
      JobPage.renderStatus(doc);
      JobPage.renderGallery();
      JobPage.awaitGrid(doc);
    } catch (err) { $("job-error").textContent = err.message; }
  },

  // The grid is composed just after the job ends: look again for a while until it is there.
  awaitGrid(doc) {
    const wants = doc.params && doc.params.grid && TERMINAL.includes(doc.state) && !doc.grid;
    JobPage.gridTries = wants ? (JobPage.gridTries || 0) + 1 : 0;
    if (wants && JobPage.gridTries <= 60) JobPage.scheduleReload(1000);
  },

  // Live updates over the job's event stream; reconnects until the job has finished.
  async listen() {
    const id = JobPage.id;
    while (id === JobPage.id && JobPage.job && !TERMINAL.includes(JobPage.job.state)) {
      const ctrl = new AbortController();
      JobPage.abort = ctrl;
      try {
        await Api.events(`/v1/jobs/${encodeURIComponent(id)}/events`, JobPage.onEvent, ctrl.signal);
      } catch (err) {
        if (ctrl.signal.aborted || id !== JobPage.id) return;
        if (err instanceof ApiError && err.status < 500) { $("job-error").textContent = err.message; return; }
      }
      if (id !== JobPage.id) return;
      await JobPage.load();
      if (JobPage.job && !TERMINAL.includes(JobPage.job.state)) await new Promise((r) => setTimeout(r, 2000));
    }
  },

  onEvent(name, data) {
    JobPage.eventsSeen[name] = (JobPage.eventsSeen[name] || 0) + 1;
    if (name === "job.state") {
      JobPage.renderStatus({...(JobPage.job || {}), ...data});
    } else if (name === "item.started" || name === "item.progress") {
      const it = JobPage.items.find((x) => x.index === data.index);
      if (it && it.state !== "succeeded") {
        it.state = "running";
        if (data.steps) it.step = `${data.step}/${data.steps}`;
        JobPage.renderTile(it);
      }
      JobPage.scheduleStatus();
    } else if (name === "item.preview") {
      const it = JobPage.items.find((x) => x.index === data.index);
      if (it && it.state !== "succeeded" && PREVIEW_URL.test(data.image || "")) {
        it.preview = data.image;
        it.state = "running";
        if (data.steps) it.step = `${data.step}/${data.steps}`;
        JobPage.renderTile(it);
      }
    } else if (name === "item.finished") {
      JobPage.scheduleReload();
    } else if (name === "job.finished") {
      JobPage.scheduleReload(0);
    }
  },

  // Coalesce bursts of events into one status read and one gallery reload.
  scheduleStatus() {
    if (JobPage.statusPending) return;
    JobPage.statusPending = setTimeout(async () => {
      JobPage.statusPending = null;
      const id = JobPage.id;
      try {
        const doc = await Api.call(`/v1/jobs/${encodeURIComponent(id)}?limit=0`);
        if (id === JobPage.id) JobPage.renderStatus({...JobPage.job, ...doc, items: JobPage.items});
      } catch (_) { /* the next event retries */ }
    }, 500);
  },

  scheduleReload(delay = 300) {
    clearTimeout(JobPage.pending);
    JobPage.pending = setTimeout(JobPage.load, delay);
  },

  renderStatus(doc) {
    JobPage.job = {...(JobPage.job || {}), ...doc};
    const j = JobPage.job;
    $("job-state").replaceChildren(stateBadge(j.state));
    $("job-progress").value = j.progress || 0;
    const eta = TERMINAL.includes(j.state) ? "" : ` · ETA ${fmtSeconds(j.eta_seconds)}`;
    const c = j.counts || {};
    $("job-progress-text").textContent = `${pct(j.progress)} · ${c.succeeded || 0} of ${j.n_items} done` +
      (c.failed ? ` · ${c.failed} failed` : "") + (c.cancelled ? ` · ${c.cancelled} cancelled` : "") + eta;
    const p = j.params || {};
    $("job-meta").textContent = [j.model, j.pipeline, p.width && `${p.width}×${p.height}`, p.steps && `${p.steps} steps`,
      j.queue_position ? `queue position ${j.queue_position}` : "", `created ${fmtTime(j.created_at)}`]
      .filter(Boolean).join(" · ");
    $("job-warnings").replaceChildren(...(j.warnings || []).map((w) => h("li", {}, typeof w === "string" ? w : (w.message || JSON.stringify(w)))));
    $("job-cancel").disabled = TERMINAL.includes(j.state);
    $("job-retry").disabled = !((c.failed || 0) + (c.cancelled || 0)) || !TERMINAL.includes(j.state);
    const grid = safeUrl(j.grid);
    $("grid-section").hidden = !grid;
    if (grid) { $("grid-img").src = grid; $("grid-link").href = grid; }
    const n = j.n_items || 0;
    $("gallery-range").textContent = n > GALLERY_PAGE ? `${JobPage.offset + 1}–${Math.min(n, JobPage.offset + GALLERY_PAGE)} of ${n}` : "";
    $("gallery-prev").hidden = $("gallery-next").hidden = n <= GALLERY_PAGE;
    $("gallery-prev").disabled = JobPage.offset === 0;
    $("gallery-next").disabled = JobPage.offset + GALLERY_PAGE >= n;
  },

  page(dir) {
    JobPage.offset = Math.max(0, JobPage.offset + dir * GALLERY_PAGE);
    JobPage.load();
  },

  renderGallery() {  // a reload keeps the previews already shown
    const previews = Object.fromEntries((JobPage.shown || []).filter((x) => x.preview).map((x) => [x.index, x.preview]));
    for (const it of JobPage.items) if (!it.preview && previews[it.index]) it.preview = previews[it.index];
    JobPage.shown = JobPage.items;
    const gallery = $("gallery");
    gallery.replaceChildren(...JobPage.items.map((it) => h("li", {id: `tile-${it.index}`})));
    JobPage.items.forEach(JobPage.renderTile);
  },

  renderTile(it) {
    const li = $(`tile-${it.index}`);
    if (!li) return;
    const src = safeUrl(it.thumb_url) || safeUrl(it.url);
    const sweep = it.sweep ? Object.entries(it.sweep).map(([k, v]) => `${k}=${v}`).join(", ") : "";
    const caption = h("span", {className: "caption", title: it.prompt},
      `#${it.index} · `, sweep ? `${sweep} · ` : "", h("span", {className: "prompt"}, it.prompt));
    let body;
    const video = it.state === "succeeded" && safeUrl(it.video_url);
    if (src && video) {  // a clip plays in place, its poster (first frame) shown until it does
      body = h("div", {className: "tile"}, h("video", {src: video, poster: src, controls: true, muted: true, loop: true,
        playsInline: true, preload: "metadata", width: 128, height: 128, "aria-label": `Video ${it.index}: ${it.prompt}`}),
        caption);
    } else if (src && it.state === "succeeded") {
      body = h("button", {type: "button", className: "tile", "aria-label": `Open image ${it.index}: ${it.prompt}`,
        onclick: () => Viewer.open(it, JobPage.job)},
        h("img", {src, alt: it.prompt, loading: "lazy", width: 128, height: 128}), caption);
    } else {
      const label = it.state === "running" && it.step ? `running ${it.step}` : it.state;
      const forming = it.state === "running" && it.preview ?  // the image forming (item.preview), until it is made
        h("img", {src: it.preview, alt: `${it.prompt} (forming)`, className: "preview", width: 128, height: 128}) : null;
      body = h("div", {className: `tile placeholder state-${it.state}`, title: it.error || ""},
        forming, h("span", {}, label), it.error ? h("span", {className: "small"}, it.error) : null, caption);
    }
    li.replaceChildren(body);
  },

  async cancel() {
    try {
      await Api.call(`/v1/jobs/${encodeURIComponent(JobPage.id)}`, {method: "DELETE"});
      JobPage.scheduleReload(0);
    } catch (err) { $("job-error").textContent = err.message; }
  },

  async retry() {
    try {
      await Api.call(`/v1/jobs/${encodeURIComponent(JobPage.id)}/retry`, {method: "POST"});
      await JobPage.load();
      JobPage.listen();
    } catch (err) { $("job-error").textContent = err.message; }
  },

  // Without a token the browser downloads the link itself (streamed to disk). A link cannot carry
  // the Authorization header, so with a token the zip is fetched and handed over as a blob.
  async download(e) {
    if (!Api.token()) return;
    e.preventDefault();
    const a = e.currentTarget;
    a.setAttribute("aria-busy", "true");
    try {
      const r = await fetch(a.href, {headers: Api.headers()});
      if (!r.ok) throw new Error(`download failed: HTTP ${r.status}`);
      const url = URL.createObjectURL(await r.blob());
      const tmp = h("a", {href: url, download: `sdq-${JobPage.id}.zip`});
      document.body.append(tmp);
      tmp.click();
      tmp.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (err) { $("job-error").textContent = err.message; }
    a.removeAttribute("aria-busy");
  },
};

// ---------------------------------------------------------------- Full image with its infotext
const Viewer = {
  open(it, job) {
    const p = {...(job && job.params || {}), ...(it.params || {})};
    const fields = [
      ["Prompt", it.prompt], ["Negative prompt", it.negative_prompt || p.negative_prompt || ""],
      ["Seed", it.seed], ["Steps", p.steps], ["Sampler", p.scheduler || "model default"],
      ["Size", p.width && `${p.width}×${p.height}`], ["Model", job && job.model],
      ["Worker", it.worker], ["Device", it.device], ["Dtype", it.dtype],
      ["Duration", it.duration_s !== null && it.duration_s !== undefined ? `${Number(it.duration_s).toFixed(2)} s` : "–"],
      ["Cached", it.cached ? `yes, from job ${it.cached_from.job} image ${it.cached_from.index}` : "no"],
    ];
    $("viewer-title").textContent = `Image ${it.index}`;
    $("viewer-img").src = safeUrl(it.url) || "";
    $("viewer-img").alt = it.prompt || "";
    $("viewer-link").href = safeUrl(it.url) || "#";
    $("viewer-info").replaceChildren(...fields.flatMap(([k, v]) => [
      h("dt", {}, k), h("dd", {dataset: {field: k.toLowerCase().replace(/ /g, "-")}}, v === undefined || v === null || v === "" ? "–" : v)]));
    $("viewer").showModal();
  },
};

// ---------------------------------------------------------------- Fleet
const SPEED_STEPS = 20; // steps per image the speed column's "s/image" counts (the default)

// A worker's measured rates (capability record `speed`: megapixel-steps per second per
// "model|pipeline|pixel class", with the latest `width` and `height` of that kind) in words:
// steps/s and time per image at that size (a record without them: at the class's largest size).
function speedLines(speed) {
  return Object.entries(speed || {}).filter(([, r]) => r && r.rate > 0).sort().map(([key, r]) => {
    const [model, pipeline, cls] = key.split("|");
    const side = Number(String(cls).replace(/^p/, ""));
    const [w, h, size] = r.width > 0 && r.height > 0 ? [r.width, r.height, `${r.width}×${r.height}`]
      : [side, side, `≤${side}×${side}`];
    const measured = `${fmtNum(r.rate)} megapixel-steps/s measured over ${r.n || 0} images`;
    if (!(w > 0 && h > 0)) return {kind: key, text: `${fmtNum(r.rate)} megapixel-steps/s`, title: measured};
    const stepsPerS = r.rate / (w * h / 1e6);
    const perImage = SPEED_STEPS / stepsPerS;
    const image = Number(perImage.toPrecision(6)) >= 1 ? `${fmtNum(perImage)} s/image` : `${fmtNum(1 / perImage)} images/s`;
    return {kind: `${String(model).replace(/^builtin:/, "")} ${pipeline} ${size}`,
            text: `${fmtNum(stepsPerS)} steps/s · ${image}`, title: `${measured}; at ${size}, ${SPEED_STEPS} steps per image`};
  });
}

function speedCell(speed) {
  const lines = speedLines(speed);
  if (!lines.length) return h("span", {className: "muted"}, "not measured yet");
  return h("ul", {className: "speeds"}, lines.map((l) => h("li", {title: l.title},
    h("span", {className: "muted small"}, l.kind), h("br"), h("span", {className: "speed"}, l.text))));
}

function queueRow(q) {
  return h("tr", {}, h("td", {className: "mono"}, q.name), h("td", {}, q.messages), h("td", {}, q.consumers));
}

const FleetPage = {
  timer: null,

  enter() { FleetPage.refresh(); FleetPage.timer = setInterval(FleetPage.refresh, POLL_MS); },
  leave() { clearInterval(FleetPage.timer); },

  async refresh() {
    try {
      const [{workers}, {queues}] = await Promise.all([Api.call("/v1/workers"), Api.call("/v1/queues")]);
      $("fleet-error").textContent = "";
      const now = Date.now() / 1000;
      $("fleet-empty").hidden = workers.length > 0;
      const open = new Set([...$("workers-body").querySelectorAll("details[open]")].map((d) => d.dataset.worker));
      $("workers-body").replaceChildren(...workers.map((w) => FleetPage.row(w, now, open.has(w.name))));
      FleetPage.queues(queues, workers);
    } catch (err) { $("fleet-error").textContent = err.message; }
  },

  // Queues with waiting messages first; the empty rest folded away. (The API lists the queues
  // live workers consume, so every one has a consumer: the number says how many workers listen.)
  queues(queues, workers) {
    const consumers = {};
    for (const w of workers) for (const q of w.queues || []) consumers[q] = (consumers[q] || 0) + 1;
    const rows = queues.map((q) => ({...q, consumers: consumers[q.name] || 0}));
    const waiting = rows.filter((q) => q.messages > 0)
      .sort((a, b) => (b.messages - a.messages) || a.name.localeCompare(b.name));
    const empty = rows.filter((q) => !(q.messages > 0));
    $("queues-body").replaceChildren(...waiting.map(queueRow));
    if (!waiting.length) {
      $("queues-body").append(h("tr", {}, h("td", {colSpan: 3, className: "muted"},
        queues.length ? "Nothing is waiting." : "No queues: no live worker.")));
    }
    $("queues-idle").hidden = !empty.length;
    $("queues-idle-count").textContent = `${empty.length} ${empty.length === 1 ? "queue" : "queues"} with nothing waiting`;
    $("queues-idle-body").replaceChildren(...empty.map(queueRow));
  },

  row(w, now, open = false) {
    const cur = w.current_item;
    const current = cur && cur.job
      ? h("a", {href: `#/jobs/${encodeURIComponent(cur.job)}`, className: "mono"},
          `${short(cur.job)} #${(cur.items || []).join(", #")}`)
      : "idle";
    const age = w.last_seen ? Math.max(0, now - w.last_seen) : null;
    return h("tr", {},
      h("td", {}, h("strong", {}, w.name), h("br"), h("span", {className: "muted small"}, w.host || ""),
        h("details", {open, dataset: {worker: w.name}}, h("summary", {}, "capability record"), h("pre", {}, JSON.stringify(w, null, 2)))),
      h("td", {}, `${w.device_name || w.device} (${w.device}, ${w.dtype})`, h("br"),
        h("span", {className: "muted small"}, w.memory_free_gb !== undefined ? `${w.memory_free_gb} of ${w.memory_total_gb} GB free` : "")),
      h("td", {}, (w.pipelines || []).join(", "), h("br"),
        h("span", {className: "muted small"}, `≤ ${w.max_pixels} px, batch ${w.max_batch}; loaded: ${(w.loaded_models || []).join(", ") || "none"}`)),
      h("td", {}, current),
      h("td", {}, w.items_done ?? 0),
      h("td", {}, speedCell(w.speed)),
      h("td", {}, age === null ? "–" : `${Math.round(age)} s ago`));
  },
};
