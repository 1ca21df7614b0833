import { expect, test } from "bun:test";
import { expressionCompilations } from "../../src/expr/index.ts";
import { useStack } from "../harness/stack.ts";
import { eventually } from "../harness/warehouse.ts";

/**
 * Each expression is compiled once (issue 18): the config loader compiles every filter, mapping,
 * `jsonata` transform, `events:` and `dedup` to validate it, and the pipelines and the webhook route
 * it starts use those compilations instead of compiling again.
 */

// A comment unique to this run keeps every source out of the cache other test files filled.
const n = `/* ${crypto.randomUUID()} */`;
const sources = {
  tracks: `type = "track" ${n}`,
  identifies: `type = "identify" ${n}`,
  email: `$lowercase(traits.email) ${n}`,
  plan: `traits.plan ${n}`,
  whole: `{"plan": traits.plan} ${n}`,
  events: `{"type": "track", "event": "Hook", "userId": who} ${n}`,
  dedup: `id ${n}`,
  hooks: `event = "Hook" ${n}`,
};
const q = (s: string) => JSON.stringify(s);

const files = {
  "model.yaml": "customerModel:\n  email: string\n  plan: string\n",
  "site.yaml": `connection: site
source: webhook
writeKeys: ["key-compile-once-0001"]
pipelines:
  - name: tracks
    import: events
    filter: ${q(sources.tracks)}
  - name: same-filter
    import: events
    filter: ${q(sources.tracks)}
  - name: mapped
    import: users
    filter: ${q(sources.identifies)}
    transform:
      mapping:
        email: ${q(sources.email)}
        plan: ${q(sources.plan)}
  - name: whole
    import: users
    filter: ${q(sources.identifies)}
    transform:
      jsonata: ${q(sources.whole)}
`,
  "hook.yaml": `connection: hook
source: raw
insecure: true
events: ${q(sources.events)}
dedup: {jsonata: ${q(sources.dedup)}}
pipelines:
  - name: hooks
    import: events
    filter: ${q(sources.hooks)}
`,
};

const before = expressionCompilations();
const stack = useStack(files);

test("a config's expressions are compiled once: by the loader, not again by the pipelines and the webhook route", async () => {
  await stack.node.pipelinesReady;
  // the webhook route compiles its connection's expressions on its first delivery
  const r = await fetch(`${stack.node.url}/v1/webhooks/hook`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ id: "delivery-1", who: "u-1" }),
  });
  expect(r.status).toBe(200);
  // the derived event went through the raw connection's pipeline and its filter
  await eventually(
    stack.db,
    "SELECT event FROM tributary.events FINAL WHERE connection = 'hook'",
    (r: { event: string }[]) => r.length === 1 && r[0]!.event === "Hook",
  );
  // the distinct sources, each once: the filter two pipelines share and the one two users pipelines
  // share included
  expect(expressionCompilations() - before).toBe(Object.keys(sources).length);
});
