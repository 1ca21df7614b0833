import { randomUUID } from "node:crypto";
import type { KV } from "@nats-io/kv";
import { type Link, type Profile, ProfileConflictError, ProfileStoreUnavailable } from "./profile-model.ts";
import { isWrongLastSequence } from "../../bus/errors.ts";

/** KV reads and writes made, for tests and benchmarks (incrementality: per event, not per profile). */
export const kvOps = { reads: 0, writes: 0 };
const enc = new TextEncoder();

interface Slot<T> {
  value: T | undefined;
  revision: number;
  dirty: boolean;
}

const copy = (p: Profile): Profile => ({
  ...p,
  anonymousIds: [...p.anonymousIds],
  props: { ...p.props },
  ...(p.userIds && { userIds: [...p.userIds] }),
  ...(p.merged && { merged: [...p.merged] }),
});

/** What one update changed, so a refused update can be undone. */
interface Journal {
  /** Each profile slot as it was before the update first changed it (undefined: there was none). */
  profiles: Map<string, Slot<Profile> | undefined>;
  identities: Map<string, { value: string | undefined; dirty: boolean }>;
  touched: string[];
  links: number;
}

/**
 * One attempt at applying a batch to the KV buckets: identities and profiles are read through once
 * each, every change is journalled per update (so a refused update is undone alone), and all is
 * written at the end, compare-and-set on each key's revision (a race is a ProfileConflictError).
 */
export class Attempt {
  readonly identities = new Map<string, Slot<string>>();
  readonly profiles = new Map<string, Slot<Profile>>();
  readonly touched = new Set<string>();
  readonly links: Link[] = [];

  /** Profiles created or merged in this attempt: an update that did neither and changed no identifier value needs no matching. */
  reshaped = 0;
  /** Profiles an identity led to that were not in the store (recreated empty by resolve). */
  readonly missing = new Set<string>();

  constructor(
    readonly ids: KV,
    readonly store: KV,
    readonly now: number,
    readonly attempt = 1,
  ) {}

  async prefetch(keys: string[]): Promise<void> {
    await Promise.all([...new Set(keys)].filter((k) => !this.identities.has(k)).map((k) => this.#readIdentity(k)));
    const pids = [...this.identities.values()]
      .map((s) => s.value)
      .filter((v): v is string => !!v && !this.profiles.has(v));
    await Promise.all([...new Set(pids)].map((id) => this.#readProfile(id)));
  }

  #journal?: Journal;

  async #readIdentity(key: string): Promise<Slot<string>> {
    kvOps.reads++;
    const e = await this.ids.get(key).catch((err) => {
      throw new ProfileStoreUnavailable(err);
    });
    const slot = {
      value: e && e.operation === "PUT" ? e.string() : undefined,
      revision: e?.revision ?? 0,
      dirty: false,
    };
    this.identities.set(key, slot);
    return slot;
  }

  async #readProfile(id: string): Promise<Slot<Profile>> {
    kvOps.reads++;
    const e = await this.store.get(id).catch((err) => {
      throw new ProfileStoreUnavailable(err);
    });
    const slot = {
      value: e && e.operation === "PUT" ? (e.json() as Profile) : undefined,
      revision: e?.revision ?? 0,
      dirty: false,
    };
    this.profiles.set(id, slot);
    return slot;
  }

  async identity(key: string): Promise<string | undefined> {
    return (this.identities.get(key) ?? (await this.#readIdentity(key))).value;
  }

  /** Starts recording one update's changes. */
  begin(): void {
    this.#journal = { profiles: new Map(), identities: new Map(), touched: [], links: this.links.length };
  }

  /** The profiles the current update changed, as they are now. */
  edited(): Profile[] {
    return [...this.#journal!.profiles.keys()]
      .map((id) => this.profiles.get(id)?.value)
      .filter((p): p is Profile => !!p);
  }

  commit(): void {
    this.#journal = undefined;
  }

  /** Undoes every change of the current update. */
  rollback(): void {
    const j = this.#journal!;
    for (const [id, slot] of j.profiles) {
      if (slot) this.profiles.set(id, slot);
      else this.profiles.delete(id);
    }
    for (const [key, was] of j.identities) Object.assign(this.identities.get(key)!, was);
    for (const id of j.touched) this.touched.delete(id);
    this.links.length = j.links;
    this.#journal = undefined;
  }

  #save(id: string): void {
    const j = this.#journal;
    if (!j || j.profiles.has(id)) return;
    const slot = this.profiles.get(id);
    j.profiles.set(id, slot && { ...slot, value: slot.value && copy(slot.value) });
  }

  /** Call before changing `p` in place. */
  edit(p: Profile): Profile {
    this.#save(p.id);
    return p;
  }

  touch(id: string): void {
    if (this.touched.has(id)) return;
    this.touched.add(id);
    this.#journal?.touched.push(id);
  }

  /** Points an identity at a profile; `link` names a userId or anonymousId for the profile map. */
  setIdentity(key: string, profileId: string, link?: Omit<Link, "profileId">): void {
    const slot = this.identities.get(key)!;
    if (slot.value === profileId) return;
    if (link) this.links.push({ ...link, profileId });
    const j = this.#journal;
    if (j && !j.identities.has(key)) j.identities.set(key, { value: slot.value, dirty: slot.dirty });
    slot.value = profileId;
    slot.dirty = true;
  }

  /** The live profile an identity points at, following merges. */
  async resolve(key: string): Promise<Profile | undefined> {
    let id = await this.identity(key);
    for (let hops = 0; id && hops < 16; hops++) {
      const slot = this.profiles.get(id) ?? (await this.#readProfile(id));
      // An identity written by a node that died before writing its profile: start it afresh.
      let p = slot.value;
      if (!p) {
        this.missing.add(id);
        p = this.create(id);
      }
      if (!p.mergedInto) return p;
      id = p.mergedInto;
    }
    return undefined;
  }

  create(id: string = randomUUID()): Profile {
    this.reshaped++;
    const p: Profile = {
      id,
      anonymousIds: [],
      firstSeen: Number.MAX_SAFE_INTEGER,
      lastSeen: 0,
      updatedAt: this.now,
      props: {},
    };
    this.#save(id);
    const slot = this.profiles.get(id);
    if (slot) slot.value = p;
    else this.profiles.set(id, { value: p, revision: 0, dirty: true });
    this.changed(p);
    return p;
  }

  /** After changing `p` (which edit() saved first). */
  changed(p: Profile): void {
    p.updatedAt = this.now;
    this.profiles.get(p.id)!.dirty = true;
    this.touch(p.id);
  }

  async write(): Promise<void> {
    // Identities first: a profile is reachable only once written, and one written without its
    // identity (a crash in between) is simply recreated on the next event.
    const put = async <T>(kv: KV, key: string, slot: Slot<T>, data: string) => {
      if (!slot.dirty) return;
      kvOps.writes++;
      try {
        slot.revision =
          slot.revision === 0
            ? await kv.create(key, enc.encode(data))
            : await kv.update(key, enc.encode(data), slot.revision);
      } catch (e) {
        if (isWrongLastSequence(e)) throw new ProfileConflictError(`${key}: ${(e as Error).message}`);
        throw e;
      }
      slot.dirty = false;
    };
    await Promise.all([...this.identities].map(([k, s]) => put(this.ids, k, s, s.value!)));
    await Promise.all([...this.profiles].map(([k, s]) => put(this.store, k, s, JSON.stringify(s.value))));
  }
}
