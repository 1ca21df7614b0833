import type { JetStreamManager } from "@nats-io/jetstream";
import type { IdentityRules } from "./identity-rules.ts";
import { type Link, type ProfileState, ProfileStore, type ProfileUpdate } from "./profiles.ts";
import { identityOf, type SourceIdentity } from "./sources.ts";

/**
 * Re-resolution (`npm run resolve`, PRODUCT.md §8): the identity graph and the profiles rebuilt
 * from the source identities alone, under the rules of now. Each record is turned back into the
 * events that matter to resolution, at the times they happened: the identity first seen; each
 * anonymous id and alias at the time it was first linked; each identifier value at the earliest
 * time it was carried; each property's newest value at its own time (with its messageId, so ties
 * break as live); the identity last seen. Replayed in time order through the same ProfileStore
 * code as live events, they give the profiles a fresh ingestion under the new rules gives when
 * events arrived in time order and no identity changed an identifier value (a changed value is
 * resolved as its newest: what the identity says now). test/unit/identity-resolve.property.test.ts
 * checks that equivalence on random sequences.
 */
type Step = ProfileUpdate & { order: number; identity: string };

export function replayPlan(records: SourceIdentity[], rules: IdentityRules): ProfileUpdate[] {
  const steps: Step[] = [];
  const identifiers = new Set(rules.identifiers);
  for (const r of records) {
    const identity = identityOf(r);
    const base = r.userId !== undefined ? { userId: r.userId } : { anonymousId: r.anonymousId };
    const step = (order: number, timestamp: number, more: Partial<ProfileUpdate> = {}, messageId = "") =>
      steps.push({ ...base, order, identity, timestamp, messageId, props: {}, ...more });
    step(0, r.firstSeen);
    for (const [anonymousId, t] of Object.entries(r.anonymousIds)) step(1, t, { anonymousId });
    for (const [previousId, t] of Object.entries(r.previousIds)) step(2, t, { previousId });
    const byTime = new Map<string, Step>();
    const prop = (t: number, m: string, name: string, v: unknown) => {
      const key = `${t}\0${m}`;
      const s = byTime.get(key);
      if (s) s.props[name] = v;
      else {
        const s2: Step = { ...base, order: 3, identity, timestamp: t, messageId: m, props: { [name]: v } };
        byTime.set(key, s2);
        steps.push(s2);
      }
    };
    // Identifier values carried together at a time arrive together (one step, before the other
    // properties of that time), as the event that first carried them did: an email and a phone
    // given at once must be compared at once.
    const firstCarried = new Map<number, Step>();
    for (const [name, p] of Object.entries(r.props)) {
      if (identifiers.has(name)) {
        const s = firstCarried.get(p.f);
        if (s) {
          s.props[name] = p.v;
          if (p.m > s.messageId) s.messageId = p.m;
        } else {
          const s2: Step = { ...base, order: 2.5, identity, timestamp: p.f, messageId: p.m, props: { [name]: p.v } };
          firstCarried.set(p.f, s2);
          steps.push(s2);
        }
      }
      prop(p.t, p.m, name, p.v);
    }
    step(4, r.lastSeen);
  }
  steps.sort(
    (a, b) =>
      a.timestamp - b.timestamp ||
      a.order - b.order ||
      (a.identity < b.identity ? -1 : a.identity > b.identity ? 1 : 0) ||
      (a.messageId < b.messageId ? -1 : a.messageId > b.messageId ? 1 : 0),
  );
  return steps.map(({ order: _o, identity: _i, ...u }) => u);
}

export interface Rebuilt {
  /** Every profile's last state (tombstones included: they are rows to delete). */
  states: Map<string, ProfileState>;
  /** Each userId (`u:`) and anonymousId (`a:`) → its profile, with the KV revision of that link. */
  links: Map<string, Link & { revision: number }>;
  /** Updates refused for what they carry (a limit), with the reason. */
  refused: { update: ProfileUpdate; reason: string }[];
  /** Each record's identity → the profile it ended in. */
  profileOf: Map<string, string>;
}

/**
 * Empties the graph and replays the plan into it, in batches. Live users pipelines must not write
 * meanwhile (README: disable them, resolve, enable them: they resume where they stopped).
 */
export async function rebuildGraph(
  store: ProfileStore,
  jsm: JetStreamManager,
  records: SourceIdentity[],
  rules: IdentityRules,
  batch = 500,
): Promise<Rebuilt> {
  await ProfileStore.clear(jsm);
  const plan = replayPlan(records, rules);
  const out: Rebuilt = { states: new Map(), links: new Map(), refused: [], profileOf: new Map() };
  for (let i = 0; i < plan.length; i += batch) {
    const updates = plan.slice(i, i + batch);
    const r = await store.apply(updates, rules);
    for (const s of r.states) out.states.set(s.profile.id, s);
    for (const l of r.links) out.links.set(`${l.kind}:${l.id}`, l);
    for (const x of r.refused) out.refused.push({ update: updates[x.index]!, reason: x.reason });
  }
  // A link's profile may have been merged since: follow to the live one.
  const live = (id: string) => {
    for (let hops = 0; hops < 64; hops++) {
      const next = out.states.get(id)?.profile.mergedInto;
      if (!next) return id;
      id = next;
    }
    return id;
  };
  for (const l of out.links.values()) l.profileId = live(l.profileId);
  for (const r of records) {
    const l = out.links.get(identityOf(r));
    if (l) out.profileOf.set(identityOf(r), l.profileId);
  }
  return out;
}
