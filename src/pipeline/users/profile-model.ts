import { createHash } from "node:crypto";
import { identifierText } from "./identity-rules.ts";

/**
 * What identity resolution stores and exchanges (profiles.ts): a profile, an update, the outcome of
 * a batch, the limits a profile keeps within, the identities bucket's keys, and how a property
 * takes a value.
 */

/** One person as the profiles bucket holds them (or a tombstone: `mergedInto`). */
export interface Profile {
  id: string;
  userId?: string;
  anonymousIds: string[];
  firstSeen: number;
  lastSeen: number;
  updatedAt: number;
  /** value, event time (ms), messageId of the event that set it */
  props: Record<string, { v: unknown; t: number; m: string }>;
  /** Set when this profile was merged into another: a tombstone. */
  mergedInto?: string;
  /** Anonymous ids dropped from `anonymousIds` (oldest first) to keep it within the limit; their identities still lead here. */
  anonymousIdsDropped?: number;
  /** Other userIds merged in (by alias, or by identifiers with mergeUserIds): their identities lead here. */
  userIds?: string[];
  /** Profiles merged into this one (their tombstones): forgetting this profile removes them too. */
  merged?: string[];
}

/**
 * What a profile may carry (README "Users", Limits), so its KV value stays well under NATS'
 * max_payload (1 MiB by default) and its users row stays small: an event that would break one is
 * refused on its own (dead-lettered with the reason) and the profile keeps its last good state.
 */
export const PROFILE_LIMITS = {
  /** userId, anonymousId and previousId, in UTF-8 bytes. */
  idBytes: 1024,
  /** Anonymous ids listed on a profile; beyond it the oldest are dropped and counted. */
  anonymousIds: 100,
  /** The profile as stored in KV (JSON, UTF-8 bytes). */
  profileBytes: 256 * 1024,
};

export const fmt = (n: number) => String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");

/** Why an id cannot be used, or undefined. */
export function idProblem(kind: string, id: string): string | undefined {
  const n = Buffer.byteLength(id);
  if (n > PROFILE_LIMITS.idBytes)
    return `${kind} is ${fmt(n)} bytes, more than the ${fmt(PROFILE_LIMITS.idBytes)} an id may have`;
  return undefined;
}

/** An update that cannot be applied for what it carries: refused on its own, the batch goes on. */
export class ProfileRefused extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ProfileRefused";
  }
}

/** The KV buckets could not be read: nothing is wrong with the batch, it is retried. */
export class ProfileStoreUnavailable extends Error {
  constructor(override readonly cause: unknown) {
    super(`profile store unavailable: ${String((cause as Error)?.message ?? cause)}`);
    this.name = "ProfileStoreUnavailable";
  }
}

export interface ProfileUpdate {
  userId?: string;
  anonymousId?: string;
  /** alias: the id being merged into userId. */
  previousId?: string;
  timestamp: number;
  messageId: string;
  props: Record<string, unknown>;
}

export interface ProfileState {
  profile: Profile;
  /** KV revision of this state: increases with every change, the users row's version. */
  revision: number;
}

/** An id that now leads to another profile (for the profile_map table). */
export interface Link {
  kind: "u" | "a";
  id: string;
  profileId: string;
}

export interface ApplyOutcome {
  /** Every profile the applied updates touched, as stored. */
  states: ProfileState[];
  /** Updates refused for what they carry (by index in the batch), with the reason; none of their changes were kept. */
  refused: { index: number; reason: string }[];
  /** By index in the batch: the profile each applied update ended in (undefined: refused). */
  targets: (string | undefined)[];
  /** Every userId and anonymousId whose profile changed, with its new profile and the KV revision of that link. */
  links: (Link & { revision: number })[];
}

export class ProfileConflictError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ProfileConflictError";
  }
}

/** The identities bucket's key of a userId ("u"), anonymousId ("a") or identifier value ("i": `name\0value`). */
export const keyOf = (kind: "u" | "a" | "i", id: string) =>
  `${kind}.${createHash("sha256").update(id).digest("base64url").slice(0, 32)}`;
export const identifierKey = (name: string, v: unknown) => keyOf("i", `${name}\0${identifierText(v)}`);

/** Property entries are never changed in place (setProp replaces them): their sizes are measured once. */
const entryBytes = new WeakMap<object, number>();
const bytesOf = (v: unknown) => Buffer.byteLength(JSON.stringify(v) ?? "null");

/**
 * The bytes of JSON.stringify(p) (to within a few), measured without serialising the whole
 * profile for every update: the scalar fields, then each property entry (measured once) and id.
 */
export function profileBytes(p: Profile): number {
  let n = bytesOf({ ...p, props: {}, anonymousIds: [] });
  for (const [k, e] of Object.entries(p.props)) {
    let b = entryBytes.get(e);
    if (b === undefined) entryBytes.set(e, (b = bytesOf(e)));
    n += bytesOf(k) + b + 2;
  }
  for (const id of p.anonymousIds) n += bytesOf(id) + 1;
  return n;
}

/** Keeps the newest PROFILE_LIMITS.anonymousIds ids, counting those dropped. */
export function capAnonymousIds(p: Profile): void {
  const over = p.anonymousIds.length - PROFILE_LIMITS.anonymousIds;
  if (over <= 0) return;
  p.anonymousIds.splice(0, over);
  p.anonymousIdsDropped = (p.anonymousIdsDropped ?? 0) + over;
}

/** Sets a property unless the profile holds a newer value (later event time; messageId breaks ties). True when it changed. */
export function setProp(p: Profile, name: string, v: unknown, t: number, m: string): boolean {
  const cur = p.props[name];
  if (cur && (cur.t > t || (cur.t === t && cur.m > m))) return false;
  if (cur && cur.t === t && cur.m === m && JSON.stringify(cur.v) === JSON.stringify(v)) return false;
  p.props[name] = { v, t, m };
  return true;
}
