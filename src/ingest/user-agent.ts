import { UAParser } from "ua-parser-js";

/**
 * `context.userAgent` → `context.browser` / `context.os` (PRODUCT.md §1 "Enrichment and
 * privacy"), as Krenalis's collector does it (krenalis/krenalis
 * core/internal/collector/decoder.go: `parseUserAgent`, `normalizeContextBrowser`,
 * `normalizeContextOS`):
 * - names of the common families are spelled one way (`chrome` → `Chrome`, `darwin` / `macos` →
 *   `macOS`), whether they came from the parser or from the sender;
 * - a version parsed from the user agent is written `major.minor.patch` (`Chrome/117.0.0.0` →
 *   `117.0.0`, `Windows NT 10.0` → `10.0.0`), and dropped when longer than 25 characters;
 * - a version the sender gave is kept as sent.
 * Unlike Krenalis, a name outside the common families is kept (Krenalis turns it into
 * `{"name": "Other", "other": <name>}`), and a user agent the parser does not recognise adds
 * nothing rather than `Other`.
 *
 * The parser is ua-parser-js 1.x (MIT; its 2.x releases are AGPL and must not be used).
 */

export interface NameVersion {
  name: string;
  version?: string;
}

const BROWSERS = new Map<string, string>(
  Object.entries({
    chrome: "Chrome",
    "chrome headless": "Chrome",
    "chrome webview": "Chrome",
    "mobile chrome": "Chrome",
    safari: "Safari",
    "mobile safari": "Safari",
    edge: "Edge",
    "microsoft edge": "Edge",
    firefox: "Firefox",
    "mobile firefox": "Firefox",
    "samsung internet": "Samsung Internet",
    "samsung browser": "Samsung Internet",
    opera: "Opera",
    "mobile opera": "Opera",
  }),
);

const SYSTEMS = new Map<string, string>(
  Object.entries({
    android: "Android",
    windows: "Windows",
    ios: "iOS",
    macos: "macOS",
    darwin: "macOS",
    "mac os": "macOS",
    "mac os x": "macOS",
    "os x": "macOS",
    linux: "Linux",
    "chrome os": "Chrome OS",
    chromeos: "Chrome OS",
    "chromium os": "Chrome OS",
  }),
);

/** Distributions the parser names on their own; Krenalis reports them all as Linux. */
const LINUX = new Set([
  "ubuntu",
  "kubuntu",
  "xubuntu",
  "lubuntu",
  "debian",
  "fedora",
  "arch",
  "gentoo",
  "mint",
  "redhat",
  "red hat",
  "suse",
  "opensuse",
  "centos",
  "slackware",
  "mandriva",
  "mageia",
  "deepin",
  "elementary os",
  "pclinuxos",
  "zenwalk",
  "linpus",
  "raspbian",
  "manjaro",
]);

/**
 * Names already spelled as stored map to themselves without lower-casing a copy: nearly every
 * event that sends `context.browser` / `context.os` sends one of them. Maps, not object literals:
 * a sender's `constructor` or `__proto__` must not find Object.prototype's.
 */
const lookupName = (table: Map<string, string>, name: string): string =>
  table.get(name) ?? table.get(name.toLowerCase()) ?? name;
for (const table of [BROWSERS, SYSTEMS]) for (const v of [...table.values()]) table.set(v, v);

export const normaliseBrowserName = (name: string): string => lookupName(BROWSERS, name);
export const normaliseOsName = (name: string): string => lookupName(SYSTEMS, name);

/** `117.0.0.0` → `117.0.0`, `10` → `10.0.0`; non-numeric versions (`XP`) as they are. */
export function tripleVersion(version: string | undefined): string | undefined {
  if (!version) return undefined;
  let out = version;
  if (/^\d+(\.\d+)*$/.test(version)) {
    const parts = version.split(".").slice(0, 3);
    while (parts.length < 3) parts.push("0");
    out = parts.join(".");
  }
  return out.length > 25 ? undefined : out;
}

export interface ParsedUserAgent {
  browser?: NameVersion;
  os?: NameVersion;
}

function parse(ua: string): ParsedUserAgent {
  const r = new UAParser(ua).getResult();
  const out: ParsedUserAgent = {};
  if (r.browser.name) {
    const version = tripleVersion(r.browser.version);
    out.browser = { name: normaliseBrowserName(r.browser.name), ...(version !== undefined && { version }) };
  }
  if (r.os.name) {
    const lower = r.os.name.toLowerCase();
    const version = tripleVersion(r.os.version);
    out.os = {
      name: LINUX.has(lower) ? "Linux" : normaliseOsName(r.os.name),
      ...(version !== undefined && { version }),
    };
  }
  return out;
}

// Parsing costs ~50 µs; traffic repeats a few thousand user agents, so the most recently used
// results are kept (a Map iterates in insertion order: a hit moves to the end, the first goes).
export const UA_CACHE_SIZE = 2048;
const cache = new Map<string, ParsedUserAgent>();
/** User agents parsed (cache misses) since start: lets a test see the cache work. */
export const userAgentStats = { parsed: 0 };

/** Browser and OS of a user agent; either is absent when the parser does not recognise it. Callers must not modify it. */
export function parseUserAgent(ua: string): ParsedUserAgent {
  let hit = cache.get(ua);
  if (hit) {
    cache.delete(ua);
    cache.set(ua, hit);
    return hit;
  }
  hit = parse(ua);
  userAgentStats.parsed++;
  if (cache.size >= UA_CACHE_SIZE) cache.delete(cache.keys().next().value!);
  cache.set(ua, hit);
  return hit;
}
