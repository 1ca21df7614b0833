import { Kvm, type KV } from "@nats-io/kv";
import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream";
import { NO_IDENTIFIERS, type IdentityRules, present } from "./identity-rules.ts";
import { Attempt } from "./profile-attempt.ts";
import { applyUpdate } from "./profile-merge.ts";
import {
  type ApplyOutcome,
  fmt,
  identifierKey,
  keyOf,
  PROFILE_LIMITS,
  ProfileConflictError,
  ProfileRefused,
  ProfileStoreUnavailable,
  type ProfileUpdate,
  profileBytes,
} from "./profile-model.ts";

export { kvOps } from "./profile-attempt.ts";
export {
  type ApplyOutcome,
  identifierKey,
  idProblem,
  keyOf,
  type Link,
  type Profile,
  PROFILE_LIMITS,
  profileBytes,
  ProfileConflictError,
  ProfileRefused,
  type ProfileState,
  ProfileStoreUnavailable,
  type ProfileUpdate,
} from "./profile-model.ts";

/**
 * Identity resolution: which profile a userId or anonymousId belongs to, and each profile's
 * properties, kept in JetStream KV so every node sees the same graph. Writes are
 * compare-and-set on the KV revision: a node that raced another re-reads and re-applies its
 * batch, which is safe because applying an event twice gives the same profile.
 *
 * Rules (README "Users"): a userId update goes to that user's profile; an anonymousId-only
 * event to the anonymous profile; an event carrying both links them — the anonymous profile
 * becomes the user's (when the user had none) or is merged into it. `alias` merges previousId's
 * profile into userId's. Two identified users are never merged by an anonymousId. Every
 * property keeps the value with the latest event timestamp (messageId breaks ties), so order
 * of arrival does not matter. With identifiers (identity-rules.ts), each identifier value is
 * indexed (`i.<hash>` → profile) and a profile whose value is already indexed to another profile
 * is merged with it when the rules say they are one person.
 *
 * This file is the store: the KV buckets and the loop applying a batch (retried on a race). The
 * data and its limits are profile-model.ts, one attempt's reads, journal and writes
 * profile-attempt.ts, and the rules applied to each update profile-merge.ts.
 */

export const IDENTITIES_BUCKET = "tributary_identities";
export const PROFILES_BUCKET = "tributary_profiles";

export const SOURCES_BUCKET = "tributary_sources";

export class ProfileStore {
  constructor(
    readonly ids: KV,
    readonly store: KV,
    /** Source identities (sources.ts), kept beside the graph they rebuild. */
    readonly sources?: KV,
  ) {}

  static async open(js: JetStreamClient, replicas = 1): Promise<ProfileStore> {
    const kvm = new Kvm(js);
    const opts = { history: 1, replicas };
    return new ProfileStore(
      await kvm.create(IDENTITIES_BUCKET, opts),
      await kvm.create(PROFILES_BUCKET, opts),
      await kvm.create(SOURCES_BUCKET, opts),
    );
  }

  /**
   * Empties the identity graph and the profiles (`npm run resolve` rebuilds them): their streams
   * are purged, so revisions go on increasing and rows written afterwards replace older ones.
   */
  static async clear(jsm: JetStreamManager): Promise<void> {
    for (const b of [IDENTITIES_BUCKET, PROFILES_BUCKET]) await jsm.streams.purge(`KV_${b}`);
  }

  /**
   * Applies the updates in order, each on its own: one that breaks a limit (or fails for any
   * reason of its own) is undone and reported in `refused`, the others are applied and stored.
   * Throws only when the store itself fails (ProfileStoreUnavailable, or a KV write error), after
   * which the whole batch is retried.
   */
  async apply(
    updates: ProfileUpdate[],
    rules: IdentityRules = NO_IDENTIFIERS,
    maxAttempts = 20,
  ): Promise<ApplyOutcome> {
    for (let attempt = 1; ; attempt++) {
      const a = new Attempt(this.ids, this.store, Date.now(), attempt);
      try {
        await a.prefetch(
          updates.flatMap((u) => [
            ...[u.userId && keyOf("u", u.userId), u.anonymousId && keyOf("a", u.anonymousId)].filter(
              (k): k is string => !!k,
            ),
            ...rules.identifiers.filter((n) => present(u.props[n])).map((n) => identifierKey(n, u.props[n])),
          ]),
        );
        const refused: ApplyOutcome["refused"] = [];
        const targets: ApplyOutcome["targets"] = [];
        let slice = performance.now();
        for (const [index, u] of updates.entries()) {
          a.begin();
          try {
            targets[index] = await applyUpdate(a, u, rules);
            for (const p of a.edited()) {
              if (p.mergedInto) continue; // a tombstone only gains its mergedInto
              const size = profileBytes(p);
              if (size > PROFILE_LIMITS.profileBytes)
                throw new ProfileRefused(
                  `the profile would be ${fmt(size)} bytes, more than its limit of ${fmt(PROFILE_LIMITS.profileBytes)}`,
                );
            }
            a.commit();
          } catch (e) {
            if (e instanceof ProfileStoreUnavailable || e instanceof ProfileConflictError) throw e;
            a.rollback();
            targets[index] = undefined;
            refused.push({
              index,
              reason:
                e instanceof ProfileRefused
                  ? e.message
                  : `the profile update failed: ${String((e as Error)?.message ?? e)}`,
            });
          }
          // A long batch lets the loop breathe: heartbeats, HTTP answers and other pipelines go on.
          if (performance.now() - slice > 20) {
            await new Promise<void>((resolve) => setImmediate(resolve));
            slice = performance.now();
          }
        }
        await a.write();
        const states = [...a.touched].map((id) => {
          const slot = a.profiles.get(id)!;
          return { profile: slot.value!, revision: slot.revision };
        });
        const links = a.links.map((l) => ({ ...l, revision: a.identities.get(keyOf(l.kind, l.id))?.revision ?? 0 }));
        return { states, refused, targets, links };
      } catch (e) {
        if (!(e instanceof ProfileConflictError) || attempt >= maxAttempts) throw e;
        await Bun.sleep(Math.random() * 10 * attempt);
      }
    }
  }
}
