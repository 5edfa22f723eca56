// The page's own words. Each language is a file of its own, `i18n/<tag>.json` (English, Azerbaijani,
// Russian, Arabic and French come with the page), listed in `i18n/languages.json`: a venue adds a
// language by adding its file and its tag there, and changes a wording by editing the file. A
// file has the keys of `i18n/en.json` and `dir` (`ltr`, or `rtl` for a language written right to
// left); a key it lacks is taken from English. Channel names come from the event (each language's
// name in itself) and are never translated.
//
// The page takes the first of the browser's languages (navigator.languages) that it has, else
// the event's default (`page_language` in the event file, given by /join), else English.

const BASE = new URL('./i18n/', import.meta.url);
// The languages that come with the page, should languages.json not load.
const BUILT_IN = ['en', 'az', 'ru', 'ar', 'fr'];
// Longest accepted language file, to keep a broken venue file from stalling a phone.
const MAX_FILE = 64 * 1024;

// The language to use: `preferred` (the browser's, best first) matched exactly (`pt-br`) or by
// its base (`pt`), then `fallback` (the event's default) the same way, then English.
export function pickLanguage(preferred, available, fallback = null) {
  const have = new Set(available.map((t) => String(t).toLowerCase()));
  const match = (tag) => {
    if (!tag) return null;
    const full = String(tag).toLowerCase();
    if (have.has(full)) return full;
    const base = full.split('-')[0];
    return have.has(base) ? base : null;
  };
  for (const tag of preferred || []) {
    const m = match(tag);
    if (m) return m;
  }
  return match(fallback) || 'en';
}

async function fetchJson(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  const text = await r.text();
  if (text.length > MAX_FILE) throw new Error(`${url}: longer than ${MAX_FILE} characters`);
  return JSON.parse(text);
}

// Loads the page's words: { lang, dir, t(key, vars) }. `fallback`: the event's default
// language, or null. Never fails: with no file at all, t() answers with the key.
export async function loadStrings({ preferred = navigator.languages || [navigator.language], fallback = null } = {}) {
  let available = BUILT_IN;
  try {
    const index = await fetchJson(new URL('languages.json', BASE));
    if (Array.isArray(index.languages) && index.languages.length) available = index.languages;
  } catch {}
  let lang = pickLanguage(preferred, available, fallback);
  const [table, english] = await Promise.all([
    fetchJson(new URL(`${lang}.json`, BASE)).catch(() => null),
    lang === 'en' ? null : fetchJson(new URL('en.json', BASE)).catch(() => null),
  ]);
  if (!table) lang = 'en';
  const tables = [table, english].filter(Boolean);
  const lookup = (key) => {
    for (const tb of tables) {
      const v = key.split('.').reduce((o, k) => (o && typeof o === 'object' ? o[k] : undefined), tb);
      if (typeof v === 'string') return v;
    }
    return key;
  };
  const dir = table && table.dir === 'rtl' ? 'rtl' : 'ltr';
  const t = (key, vars = {}) => lookup(key).replace(/\{(\w+)\}/g, (_, k) => (k in vars ? String(vars[k]) : ''));
  return { lang, dir, t };
}
