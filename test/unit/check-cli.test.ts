import { expect, test } from "bun:test";
import { join } from "node:path";
import { pipelinesDir } from "../harness/services.ts";

const CHECK = join(import.meta.dir, "../../scripts/check.ts");
const run = async (...args: string[]) => {
  const p = Bun.spawn([process.execPath, CHECK, ...args], {
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, LOG_LEVEL: "error" },
  });
  const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  return { code: await p.exited, out, err };
};

test("bun run check: a good directory passes; --explain shows each pipeline's verdict", async () => {
  const dir = pipelinesDir({
    "w.yaml": `connection: w\nsource: webhook\nwriteKeys: ["abcdefgh12"]\npipelines:\n  - name: tracks\n    import: events\n    filter: type = "track"\n  - name: users\n    import: users\n    transform:\n      mapping:\n        email: $lowercase(traits.email)\n`,
    "customer-model.yaml": "customerModel:\n  email: string\n",
  });
  const r = await run(dir, "--explain", "w");
  expect(r.code).toBe(0);
  expect(r.out).toContain("ok: 1 connection(s), 2 pipeline(s)");
  expect(r.out).toContain(`- tracks (import: events): filtered out by type = "track"`);
  expect(r.out).toContain(`users properties {"email":"ada@example.com"}`);
});

test("bun run check: problems exit non-zero with file:line messages", async () => {
  const dir = pipelinesDir({
    "a.yaml": `connection: a\nsource: webhook\nwriteKeys: ["abcdefgh12"]\npipelines:\n  - name: p\n    import: events\n    filter: type = = "x"\n`,
    "b.yaml": `connection: b\nsource: raw\ncheck: github\n`,
  });
  const r = await run(dir);
  expect(r.code).toBe(1);
  expect(r.err).toMatch(/a\.yaml:7: pipelines\/0\/filter of "p": S0211/);
  expect(r.err).toMatch(/b\.yaml:1: check: github needs the connection's "secret"/);
  expect(r.err).toContain("2 problems");
});

test("bun run check: each kind of error, with the right file:line", async () => {
  const w = (extra: string) => `connection: PLACE\nsource: webhook\nwriteKeys: ["abcdefgh-PLACE"]\n${extra}`;
  const cases: [string, string, RegExp][] = [
    [
      "schema.yaml",
      `connection: schema\nsource: webhook\nwriteKeys: ["abcdefgh12"]\npipelines:\n  - name: p\n    import: everything\n`,
      /schema\.yaml:6: .*import/,
    ],
    [
      "var.yaml",
      `connection: var\nsource: webhook\nwriteKeys: ["\${NOT_SET_ANYWHERE_42}"]\n`,
      /var\.yaml:3: .*NOT_SET_ANYWHERE_42/,
    ],
    [
      "filter.yaml",
      w(`pipelines:\n  - name: f\n    import: events\n    filter: type =\n`).replaceAll("PLACE", "filter"),
      /filter\.yaml:7: pipelines\/0\/filter of "f"/,
    ],
    [
      "mapping.yaml",
      w(
        `pipelines:\n  - name: m\n    import: users\n    transform:\n      mapping:\n        email: $lowercase(\n`,
      ).replaceAll("PLACE", "mapping"),
      /mapping\.yaml:9: pipelines\/0\/transform\/mapping\/email of "m"/,
    ],
    [
      "js.yaml",
      w(
        `pipelines:\n  - name: j\n    import: users\n    transform:\n      javascript: "function transform(event) { return {"\n`,
      ).replaceAll("PLACE", "js"),
      /js\.yaml:8: pipelines\/0\/transform\/javascript of "j": .*(Syntax|expect)/i,
    ],
    [
      "py.yaml",
      w(
        `pipelines:\n  - name: y\n    import: users\n    transform:\n      python: "def transform(event) return 1"\n`,
      ).replaceAll("PLACE", "py"),
      /py\.yaml:8: pipelines\/0\/transform\/python of "y": .*SyntaxError/,
    ],
    [
      "raw.yaml",
      `connection: raw\nsource: raw\ncheck: stripe\n`,
      /raw\.yaml:1: check: stripe needs the connection's "secret"/,
    ],
    ["customer-model.yaml", `customerModel:\n  email: string\n  age: integer\n`, /customer-model\.yaml:3: .*age/],
  ];
  for (const [name, text, want] of cases) {
    const r = await run(pipelinesDir({ [name]: text }));
    expect([name, r.code]).toEqual([name, 1]);
    expect(r.err).toMatch(want);
  }
}, 60_000);

test("bun run check: a mapping onto a property the Customer Model lacks exits non-zero, naming file:line, the property and the closest one (issue 17 #4)", async () => {
  const dir = pipelinesDir({
    "w.yaml": `connection: w\nsource: webhook\nwriteKeys: ["abcdefgh12"]\npipelines:\n  - name: users\n    import: users\n    transform:\n      mapping:\n        email: traits.email\n        emial_verified: traits.verified\n`,
    "customer-model.yaml": "customerModel:\n  email: string\n  email_verified: boolean\n",
  });
  const r = await run(dir);
  expect(r.code).toBe(1);
  expect(r.out).not.toContain("ok:");
  expect(r.err).toMatch(
    /w\.yaml:10: pipelines\/0\/transform\/mapping\/emial_verified of "users": property "emial_verified" is not in the Customer Model; did you mean email_verified\?/,
  );
  expect(r.err).toContain("1 problem in");
});

test("bun run check: schema errors list the allowed values and the closest name (issue 17 #4)", async () => {
  const r = await run(
    pipelinesDir({
      "a.yaml": `connection: a\nsource: webhook\nwriteKeys: ["abcdefgh12"]\nallowedOrigin: ["https://x.example"]\npipelines:\n  - name: e\n    import: event\n`,
    }),
  );
  expect(r.code).toBe(1);
  expect(r.err).toMatch(/a\.yaml:4: allowedOrigin: unknown key "allowedOrigin"; did you mean allowedOrigins\?/);
  expect(r.err).toMatch(/a\.yaml:7: pipelines\/0\/import: expected events \| users; did you mean events\?/);
});

test("a mapping property named __proto__ stays a plain key (no prototype pollution)", async () => {
  const { mappingTransform } = await import("../../src/pipeline/transform/expressions.ts");
  const [r] = await mappingTransform(JSON.parse(`{"__proto__": "traits.evil", "plan": "traits.plan"}`)).transformBatch([
    { traits: { evil: { polluted: true }, plan: "pro" } },
  ]);
  expect(r).toEqual({ ok: true, value: JSON.parse('{"__proto__": {"polluted": true}, "plan": "pro"}') });
  expect(Object.getPrototypeOf((r as { value: object }).value)).toBe(Object.prototype);
  expect(({} as Record<string, unknown>).polluted).toBeUndefined();
});
