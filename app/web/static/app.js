// Entry point: the API key field, the tabs (keyboard: arrows, Home, End) and the views.

import { apiKey, setApiKey } from "./api.js";
import { refreshFits } from "./fits.js";
import { initJobs, showJobs } from "./jobs.js";
import { initPlanner } from "./planner.js";

const VIEWS = ["planner", "jobs", "fits"];

function select(name, { focus = false, push = true } = {}) {
  for (const view of VIEWS) {
    const tab = document.getElementById(`tab-${view}`);
    const active = view === name;
    tab.setAttribute("aria-selected", String(active));
    tab.tabIndex = active ? 0 : -1;
    document.getElementById(`view-${view}`).hidden = !active;
    if (active && focus) tab.focus();
  }
  if (push && location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  showJobs(name === "jobs");
  if (name === "fits") refreshFits();
}

function initTabs() {
  const list = document.getElementById("tabs");
  list.addEventListener("click", (event) => {
    const tab = event.target.closest('[role="tab"]');
    if (tab) select(tab.id.slice(4));
  });
  list.addEventListener("keydown", (event) => {
    const current = VIEWS.indexOf(document.activeElement.id.slice(4));
    if (current < 0) return;
    const next = {
      ArrowRight: (current + 1) % VIEWS.length,
      ArrowLeft: (current + VIEWS.length - 1) % VIEWS.length,
      Home: 0,
      End: VIEWS.length - 1,
    }[event.key];
    if (next === undefined) return;
    event.preventDefault();
    select(VIEWS[next], { focus: true });
  });
  window.addEventListener("hashchange", () => {
    const name = location.hash.slice(1);
    if (VIEWS.includes(name)) select(name, { push: false });
  });
}

function initKey() {
  const field = document.getElementById("api-key");
  field.value = apiKey();
  field.addEventListener("input", () => setApiKey(field.value.trim()));
}

initKey();
initTabs();
initJobs();
const first = location.hash.slice(1);
select(VIEWS.includes(first) ? first : "planner", { push: false });
initPlanner();
