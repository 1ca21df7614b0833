import { createHash, randomUUID } from "node:crypto";
import { Kvm, type KV } from "@nats-io/kv";
import type { JetStreamClient } from "@nats-io/jetstream";
import { setForgottenIds } from "../../event/selection.ts";
import { log } from "../../util/log.ts";

/**
 * Tombstones of forgotten users (PRODUCT.md §8): `f.<sha256 of "u:<userId>" or "a:<anonymousId>">`
 * in a KV bucket, so no id is kept in clear. Every pipeline process watches the bucket and keeps
 * the hashes in memory; selection (src/event/selection.ts) drops and counts an event whose userId
 * or anonymousId is among them, so replays and late redeliveries do not bring a user back. A
 * tombstone's value names the forget it came from, so `forget --undo <id>` lifts all of them.
 */
export const FORGOTTEN_BUCKET = "tributary_forgotten";

export const tombstoneKey = (kind: "u" | "a", id: string) =>
  `f.${createHash("sha256").update(`${kind}:${id}`).digest("base64url").slice(0, 43)}`;

export interface Tombstone {
  at: string;
  /** One forget's tombstones share it. */
  forget: string;
}

export async function openForgotten(js: JetStreamClient, replicas = 1): Promise<KV> {
  return new Kvm(js).create(FORGOTTEN_BUCKET, { history: 1, replicas });
}

/** Tombstones for these ids; returns the forget's id. */
export async function addTombstones(kv: KV, ids: { kind: "u" | "a"; id: string }[]): Promise<string> {
  const forget = randomUUID();
  const value = JSON.stringify({ at: new Date().toISOString(), forget } satisfies Tombstone);
  for (const { kind, id } of ids) await kv.put(tombstoneKey(kind, id), value);
  return forget;
}

/** Lifts the tombstones of the forget that covered `id` (as a userId or an anonymousId); how many. */
export async function liftTombstones(kv: KV, id: string): Promise<number> {
  const forgets = new Set<string>();
  for (const kind of ["u", "a"] as const) {
    const e = await kv.get(tombstoneKey(kind, id));
    if (e?.operation === "PUT") forgets.add((e.json() as Tombstone).forget);
  }
  if (!forgets.size) return 0;
  let n = 0;
  for await (const key of await kv.keys()) {
    const e = await kv.get(key);
    if (e?.operation !== "PUT" || !forgets.has((e.json() as Tombstone).forget)) continue;
    await kv.purge(key);
    n++;
  }
  return n;
}

/** The hashes this process knows, kept current by a watch of the bucket. */
export class ForgottenIds {
  readonly #keys = new Set<string>();

  get size(): number {
    return this.#keys.size;
  }

  /** Whether the event's userId or anonymousId was forgotten (no hashing while nothing is). */
  isForgotten(e: Record<string, unknown>): boolean {
    if (!this.#keys.size) return false;
    const u = e.userId;
    const a = e.anonymousId;
    return (
      (typeof u === "string" && u !== "" && this.#keys.has(tombstoneKey("u", u))) ||
      (typeof a === "string" && a !== "" && this.#keys.has(tombstoneKey("a", a)))
    );
  }

  apply(key: string, present: boolean): void {
    if (present) this.#keys.add(key);
    else this.#keys.delete(key);
  }
}

/**
 * Watches the tombstones and installs them as every pipeline's check (setForgottenIds); resolves
 * once the existing ones are loaded, so no event is selected before. Returns a stop function.
 */
export async function watchForgotten(js: JetStreamClient, replicas = 1): Promise<() => void> {
  const kv = await openForgotten(js, replicas);
  const ids = new ForgottenIds();
  const iter = await kv.watch({ key: "f.>" });
  let loaded!: () => void;
  const ready = new Promise<void>((r) => (loaded = r));
  void (async () => {
    try {
      for await (const e of iter) {
        ids.apply(e.key, e.operation === "PUT");
        // The last of the values there were when the watch began has nothing pending after it.
        if (e.delta === 0) loaded();
      }
    } catch (err) {
      log.error("forgotten-users watch ended", { error: String(err) });
    }
  })();
  // An empty bucket sends nothing to mark the end of the initial values.
  if ((await kv.status()).values === 0) loaded();
  // A timer that is cleared: a pending 10 s sleep would keep a command (replay, dlq) alive 10 s
  // after its work was done.
  let timer: Timer | undefined;
  await Promise.race([ready, new Promise<void>((r) => (timer = setTimeout(r, 10_000)))]);
  clearTimeout(timer);
  setForgottenIds(ids);
  return () => {
    iter.stop();
    setForgottenIds(undefined);
  };
}
