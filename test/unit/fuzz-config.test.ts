import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import fc from "fast-check";
import { fuzzTimeout, hostileString, params } from "../harness/fuzz.ts";
import { ConfigError, loadConfig, parseConfigFile } from "../../src/config/loader.ts";
import { ConfigStore } from "../../src/config/store.ts";

/**
 * Property-based tests of the configuration loader (issue 7): whatever a file in `pipelines/`
 * holds, loading it either succeeds or fails with a ConfigError whose every problem starts with
 * `file:line:`; nothing else is thrown, nothing hangs, and values substituted from the
 * environment (write keys, webhook secrets) never appear in a problem, which is logged.
 */

const SECRETS = {
  SITE_KEY: "SECRET-site-key-0123456789",
  GH_SECRET: "SECRET-github-0123456789",
  TOKEN: "SECRET-token-0123456789",
};
const env = { ...SECRETS, PLAIN: "plain-value-12345" };

const VALID: Record<string, string> = {
  "site.yaml": `connection: site
source: webhook
writeKeys: ["\${SITE_KEY}", "second-key-0001"]
ip: mask24
allowedOrigins: ["https://app.example.com"]
rateLimit: {eventsPerMinute: 6000, burst: 1000}
pipelines:
  - name: all
    import: events
    filter: type = "track"
    consents: [analytics]
  - name: users
    import: users
    transform:
      mapping:
        email: $lowercase(traits.email)
        plan: traits.plan
    enabled: true
`,
  "github.yaml": `connection: github
source: raw
body: json
headers: all
check: {hmac: {header: X-Hub-Signature-256, algorithm: sha256, encoding: hex, prefix: "sha256=", secret: "\${GH_SECRET}"}}
dedup: {header: X-GitHub-Delivery}
events: '{"type": "track", "event": action, "userId": sender.login}'
table: github_events
`,
  "token.yaml": `connection: token
source: raw
body: json-array
headers: [X-Token, X-Other]
check:
  header: X-Token
  equals: ["\${TOKEN}", "\${PLAIN:-fallback}"]
dedup:
  jsonata: id
`,
  "model.yaml": `customerModel:
  email: string
  plan: string
  age: int
  signed_up_at: datetime
migrate: false
`,
};

/** Scalars that break things: wrong types, YAML tags, unclosed flow collections, bad JSONata, unset variables. */
const wildScalar = fc.oneof(
  fc.constantFrom(
    "",
    "~",
    "null",
    "[]",
    "{}",
    "-1",
    "0",
    "1e400",
    "0x1F",
    "true",
    "yes",
    "on",
    "!!binary aGk=",
    "!!str 1",
    "!!set {a}",
    "!!omap [a: 1]",
    "!foo x",
    "*nope",
    "&a x",
    '"\\ud800"',
    "'unterminated",
    '"unterminated',
    "${UNSET}",
    "${A:-}",
    "${PLAIN}",
    "${}",
    "$${SITE_KEY}",
    "[[[[[[[",
    "{a: {b: {c:",
    "x".repeat(300),
    "type = ",
    "$exists(",
    "(((((",
    '"(((((((((("',
    "__proto__",
    "constructor",
    "|",
    ">-",
    "- a",
    "? k",
    "#",
    "%YAML 1.1",
    "---",
    "...",
    "2001-12-14",
    "[a, *a]",
    "{<<: {a: 1}}",
    "function () {",
    "😀",
    "\t",
    "\u0000",
    "a: b: c",
    "@x",
    "`x`",
  ),
  hostileString(20),
  fc.jsonValue({ maxDepth: 2 }).map((v) => JSON.stringify(v)),
);

/** One line of YAML-ish text. */
const keyish = fc.oneof(
  fc.constantFrom(
    "connection",
    "source",
    "writeKeys",
    "pipelines",
    "name",
    "import",
    "filter",
    "transform",
    "mapping",
    "jsonata",
    "check",
    "secret",
    "hmac",
    "header",
    "equals",
    "dedup",
    "events",
    "customerModel",
    "migrate",
    "table",
    "<<",
    "__proto__",
    "? [a, b]",
  ),
  hostileString(8),
);
const lineish = fc
  .tuple(
    fc.integer({ min: 0, max: 8 }),
    fc.oneof(
      fc.tuple(keyish, wildScalar).map(([k, v]) => `${k}: ${v}`),
      wildScalar.map((v) => `- ${v}`),
      keyish.map((k) => `${k}:`),
      wildScalar,
    ),
  )
  .map(([indent, text]) => " ".repeat(indent) + text);

type Mutation = (lines: string[]) => string[];
const at = (lines: string[], i: number) => Math.min(Math.max(0, i), Math.max(0, lines.length - 1));
const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.nat().map(
    (i): Mutation =>
      (l) =>
        l.filter((_, j) => j !== at(l, i)),
  ),
  fc.nat().map(
    (i): Mutation =>
      (l) => [...l.slice(0, at(l, i) + 1), ...l.slice(at(l, i))],
  ),
  fc.tuple(fc.nat(), fc.nat()).map(
    ([i, j]): Mutation =>
      (l) => {
        const c = [...l];
        const a = at(c, i),
          b = at(c, j);
        [c[a], c[b]] = [c[b]!, c[a]!];
        return c;
      },
  ),
  fc.tuple(fc.nat(), wildScalar).map(
    ([i, v]): Mutation =>
      (l) =>
        l.map((line, j) => (j === at(l, i) ? line.replace(/:( .*)?$/, `: ${v}`) : line)),
  ),
  fc.tuple(fc.nat(), fc.integer({ min: -4, max: 4 })).map(
    ([i, d]): Mutation =>
      (l) =>
        l.map((line, j) =>
          j === at(l, i)
            ? d > 0
              ? " ".repeat(d) + line
              : line.slice(Math.min(-d, line.length - line.trimStart().length))
            : line,
        ),
  ),
  fc.tuple(fc.nat(), lineish).map(
    ([i, x]): Mutation =>
      (l) => [...l.slice(0, at(l, i)), x, ...l.slice(at(l, i))],
  ),
  fc.nat().map(
    (n): Mutation =>
      (l) =>
        l
          .join("\n")
          .slice(0, n % (l.join("\n").length + 1))
          .split("\n"),
  ),
  fc.tuple(fc.nat(), hostileString(3)).map(
    ([n, s]): Mutation =>
      (l) => {
        const t = l.join("\n");
        const p = n % (t.length + 1);
        return (t.slice(0, p) + s + t.slice(p)).split("\n");
      },
  ),
);
const mutated = fc
  .tuple(fc.constantFrom(...Object.keys(VALID)), fc.array(mutation, { minLength: 1, maxLength: 4 }))
  .map(([name, ms]) => ({
    name,
    text: ms.reduce((lines, m) => m(lines), VALID[name]!.split("\n")).join("\n"),
  }));

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** Loads a pipelines directory holding `files`; returns the problems (none when it loads). */
function load(files: Record<string, string>): { problems: string[]; shown: Record<string, string> } {
  const dir = mkdtempSync(join(tmpdir(), "tributary-fuzz-config-"));
  dirs.push(dir);
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  const shown = Object.fromEntries(Object.keys(files).map((n) => [n, relative(process.cwd(), join(dir, n))]));
  try {
    loadConfig(dir, env);
    return { problems: [], shown };
  } catch (e) {
    if (!(e instanceof ConfigError))
      throw new Error(`loadConfig threw ${(e as Error)?.name}, not a ConfigError: ${(e as Error)?.message}`);
    return { problems: e.problems, shown };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function expectWellFormed(problems: string[], files: string[], text?: string) {
  const lines = text === undefined ? Infinity : text.split("\n").length + 1;
  for (const p of problems) {
    expect(p).not.toMatch(/[\r\n]/);
    const m = /^([^\r\n]+?):(\d+): /.exec(p);
    expect(m, `problem without file:line: ${JSON.stringify(p)}`).not.toBeNull();
    expect(files).toContain(m![1]!);
    expect(Number(m![2])).toBeGreaterThanOrEqual(1);
    expect(Number(m![2])).toBeLessThanOrEqual(lines);
    for (const secret of Object.values(SECRETS)) expect(p).not.toContain(secret);
  }
}

describe("property: configuration loader", () => {
  test("the valid files load", () => {
    expect(load(VALID).problems).toEqual([]);
  });

  test("a YAML alias bomb, a key made of a collection and a secret that lands in a message: one-line problems, secrets shown as ${NAME}", () => {
    const laughs = [
      "a: &a [x, x, x, x, x, x, x, x, x]",
      ...["b", "c", "d", "e", "f", "g"].map((k, i) => `${k}: &${k} [${Array(9).fill(`*${"abcdefg"[i]}`).join(", ")}]`),
      "connection: x",
    ].join("\n");
    expect(parseConfigFile("f.yaml", laughs, env)).toEqual({
      kind: "problems",
      problems: ["f.yaml:1: YAML: Excessive alias count indicates a resource exhaustion attack"],
    });
    // A key may hold line breaks (a block scalar as key), and a collection key is named as YAML writes it.
    const r = parseConfigFile(
      "f.yaml",
      `? |\n  line one\n  line two\n: 1\n? [k]: $\${SITE_KEY}\nconnection: x\nsource: webhook\nwriteKeys: [abcdefgh]\n`,
      env,
    );
    expect(r.kind).toBe("problems");
    const problems = (r as { problems: string[] }).problems;
    expect(problems.some((p) => p.includes("${SITE_KEY}"))).toBe(true);
    expect(problems.some((p) => p.includes("line one line two"))).toBe(true);
    for (const p of problems) {
      expect(p).toMatch(/^f\.yaml:\d+: [^\n]+$/);
      expect(p).not.toContain(SECRETS.SITE_KEY);
    }
  });

  test(
    "property: any YAML-ish text → parseConfigFile answers (never throws, never hangs); every problem starts with file:line:",
    () => {
      fc.assert(
        fc.property(fc.array(lineish, { maxLength: 12 }), (lines) => {
          const text = lines.join("\n");
          const t0 = performance.now();
          const r = parseConfigFile("f.yaml", text, env);
          expect(performance.now() - t0).toBeLessThan(2000);
          if (r.kind === "problems") {
            expect(r.problems.length).toBeGreaterThan(0);
            expectWellFormed(r.problems, ["f.yaml"], text);
          }
        }),
        params(1500),
      );
    },
    fuzzTimeout,
  );

  test(
    "property: mutations of valid files → loadConfig loads or throws a ConfigError naming file and line, never a secret",
    () => {
      fc.assert(
        fc.property(mutated, ({ name, text }) => {
          const files = { ...VALID, [name]: text };
          const t0 = performance.now();
          const { problems, shown } = load(files);
          expect(performance.now() - t0).toBeLessThan(2000);
          expectWellFormed(problems, Object.values(shown));
          // The untouched files never get the blame for another file's problem, except for cross-file rules
          // (a mapping onto a property the mutated model no longer has is the mapping's problem).
          for (const p of problems)
            if (!p.startsWith(shown[name]!))
              expect(p).toMatch(/already defined in|also belongs to|is not in the Customer Model/);
        }),
        params(600),
      );
    },
    fuzzTimeout,
  );

  test(
    "property: a broken change keeps the last good configuration running",
    () => {
      const dir = mkdtempSync(join(tmpdir(), "tributary-fuzz-store-"));
      dirs.push(dir);
      for (const [n, t] of Object.entries(VALID)) writeFileSync(join(dir, n), t);
      const store = new ConfigStore({ dir, env });
      // The store logs each rejected change: keep those lines, and check them for secrets too.
      const logged: string[] = [];
      const write = process.stderr.write;
      process.stderr.write = ((chunk: string | Uint8Array) => (
        logged.push(String(chunk)), true
      )) as typeof process.stderr.write;
      try {
        fc.assert(
          fc.property(mutated, ({ name, text }) => {
            const good = store.current;
            writeFileSync(join(dir, name), text);
            if (!store.reload()) {
              expect(store.current).toBe(good);
              expectWellFormed(
                store.lastError!.split("\n"),
                Object.keys(VALID).map((n) => relative(process.cwd(), join(dir, n))),
              );
            }
            writeFileSync(join(dir, name), VALID[name]!);
            expect(store.reload()).toBe(true);
          }),
          params(100),
        );
      } finally {
        process.stderr.write = write;
        store.close();
      }
      for (const secret of Object.values(SECRETS)) expect(logged.filter((l) => l.includes(secret))).toEqual([]);
    },
    fuzzTimeout,
  );
});
