// What GET /families says the stored observations cover, shared by the views.

import { api } from "./api.js";

let cache = null;
let loadedAt = 0;

/** The families (docs/api.md "GET /families"), fetched again when older than `maxAgeMs`. */
export async function families(maxAgeMs = Infinity) {
  if (cache === null || Date.now() - loadedAt > maxAgeMs) {
    const body = await api("families");
    cache = body.families;
    loadedAt = Date.now();
  }
  return cache;
}

/** The recovery recipe of a method entry ("full" from a service that lists none). */
export function recipeOf(entry) {
  return entry.recipe ?? "full";
}

/** The method entry of (family, method, recipe), or null. */
export function methodEntry(list, family, method, recipe = "full") {
  const entry = (list || []).find((f) => f.family === family);
  return entry ? entry.methods.find((m) => m.method === method && recipeOf(m) === recipe) || null : null;
}
