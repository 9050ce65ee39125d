"use strict";
// sdq web page: the router (#/, #/jobs, #/jobs/<id>, #/fleet) and the token prompt.

const PAGES = {submit: null, jobs: JobsPage, job: JobPage, fleet: FleetPage};
let current = null;

function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [head, arg] = hash.split("/");
  let name = "submit";
  if (head === "jobs" && arg) name = "job";
  else if (head === "jobs" || head === "fleet") name = head;
  if (current && PAGES[current]) PAGES[current].leave();
  current = name;
  document.querySelectorAll(".page").forEach((p) => { p.hidden = p.id !== `page-${name}`; });
  document.querySelectorAll("nav a").forEach((a) => {
    const target = a.getAttribute("href").replace(/^#\/?/, "") || "submit";
    if (target === head || (target === "submit" && name === "submit")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
  if (name === "submit") Submit.loadModels();
  else if (name === "job") PAGES.job.enter(decodeURIComponent(arg));
  else PAGES[name].enter();
}

function askToken() {
  $("auth").hidden = false;
  $("token").focus();
}

document.addEventListener("DOMContentLoaded", () => {
  Api.onUnauthorized = askToken;
  $("forget-token").hidden = !Api.token();
  $("auth-form").addEventListener("submit", (e) => {
    e.preventDefault();
    Api.setToken($("token").value.trim());
    $("token").value = "";
    $("auth").hidden = true;
    $("forget-token").hidden = false;
    route();
  });
  $("forget-token").addEventListener("click", () => {
    Api.setToken("");
    $("forget-token").hidden = true;
    location.reload();
  });
  Submit.init();
  JobsPage.init();
  JobPage.init();
  window.addEventListener("hashchange", () => { route(); $("main").focus({preventScroll: true}); });
  route();
});
