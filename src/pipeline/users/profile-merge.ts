import { type IdentityRules, identifierText, present, sameByIdentifiers } from "./identity-rules.ts";
import type { Attempt } from "./profile-attempt.ts";
import {
  capAnonymousIds,
  identifierKey,
  idProblem,
  keyOf,
  type Profile,
  ProfileConflictError,
  ProfileRefused,
  type ProfileUpdate,
  setProp,
} from "./profile-model.ts";

/**
 * The rules of identity resolution (profiles.ts says them), applied to one update within an
 * Attempt: which profile it goes to, which profiles it links or merges, and its properties.
 */

/** Applies one update; the id of the profile it ended in. */
export async function applyUpdate(a: Attempt, u: ProfileUpdate, rules: IdentityRules): Promise<string> {
  for (const [kind, id] of [
    ["userId", u.userId],
    ["anonymousId", u.anonymousId],
    ["previousId", u.previousId],
  ] as const) {
    const problem = id === undefined ? undefined : idProblem(kind, id);
    if (problem) throw new ProfileRefused(problem);
  }
  const reshaped = a.reshaped;
  const uKey = u.userId !== undefined ? keyOf("u", u.userId) : undefined;
  const aKey = u.anonymousId !== undefined ? keyOf("a", u.anonymousId) : undefined;
  const byUser = uKey ? await a.resolve(uKey) : undefined;
  const byAnon = aKey ? await a.resolve(aKey) : undefined;
  let target: Profile;
  if (uKey) {
    if (byUser) {
      target = a.edit(byUser);
      if (byAnon && byAnon.id !== byUser.id && byAnon.userId === undefined) await merge(a, byAnon, target);
    } else {
      target = a.edit(byAnon && byAnon.userId === undefined ? byAnon : a.create());
      target.userId = u.userId;
      a.changed(target);
    }
    a.setIdentity(uKey, target.id, { kind: "u", id: u.userId! });
  } else {
    target = a.edit(byAnon ?? a.create());
  }
  // Link the anonymous id, unless it already belongs to another identified user.
  if (aKey && u.anonymousId !== undefined) {
    const owner = await a.resolve(aKey);
    if (!owner || owner.id === target.id || owner.userId === undefined || owner.userId === target.userId) {
      a.setIdentity(aKey, target.id, { kind: "a", id: u.anonymousId });
      if (!target.anonymousIds.includes(u.anonymousId)) {
        target.anonymousIds.push(u.anonymousId);
        capAnonymousIds(target);
        a.changed(target);
      }
    }
  }
  if (u.previousId !== undefined) {
    const prev = (await a.resolve(keyOf("u", u.previousId))) ?? (await a.resolve(keyOf("a", u.previousId)));
    if (prev && prev.id !== target.id) await merge(a, prev, target);
    else if (!prev) {
      // An alias naming an id never seen: remember it, so its later events find this user.
      await a.identity(keyOf("a", u.previousId));
      a.setIdentity(keyOf("a", u.previousId), target.id, { kind: "a", id: u.previousId });
      if (!target.anonymousIds.includes(u.previousId)) {
        target.anonymousIds.push(u.previousId);
        capAnonymousIds(target);
        a.changed(target);
      }
    }
  }
  let changed = false;
  let identifierChanged = false;
  for (const [name, v] of Object.entries(u.props))
    if (v !== undefined && setProp(target, name, v, u.timestamp, u.messageId)) {
      changed = true;
      identifierChanged ||= rules.identifiers.includes(name);
    }
  if (u.timestamp < target.firstSeen) (target.firstSeen = u.timestamp), (changed = true);
  if (u.timestamp > target.lastSeen) (target.lastSeen = u.timestamp), (changed = true);
  if (changed) a.changed(target);
  // The index already holds what an unchanged profile's values match; only a change can match anew.
  if (rules.identifiers.length && (identifierChanged || a.reshaped !== reshaped))
    target = await matchIdentifiers(a, target, rules);
  a.touch(target.id);
  return target.id;
}

/**
 * Merges `p` with every profile an identifier value of it is indexed to, when the rules make
 * them one person, until nothing more matches (a merge brings in values that may match again);
 * then indexes its values. A value indexed to a profile kept apart stays with that profile
 * unless it no longer holds the value. The profile that carries a userId survives a merge, else
 * the one already indexed. Returns the surviving profile.
 */
async function matchIdentifiers(a: Attempt, p: Profile, rules: IdentityRules): Promise<Profile> {
  for (let round = 0; round < 16; round++) {
    let merged = false;
    for (const name of rules.identifiers) {
      const v = p.props[name]?.v;
      if (!present(v)) continue;
      const key = identifierKey(name, v);
      const other = await a.resolve(key);
      // Indexed to a profile not written yet: another node is most likely writing it (identities
      // are written before profiles), so try again rather than judge it empty and take its value.
      // After a few tries it is an orphan of a node that died, and is treated as empty.
      if (other && a.missing.has(other.id) && other.id !== p.id && a.attempt < 6)
        throw new ProfileConflictError(`${key}: profile ${other.id} is not written yet`);
      if (other && other.id !== p.id && sameByIdentifiers(p, other, rules)) {
        const keepOther = other.userId !== undefined || p.userId === undefined;
        const [src, dst] = keepOther ? [p, other] : [other, p];
        await merge(a, src, dst);
        p = dst;
        merged = true;
        break;
      }
      const holds = other && identifierText(other.props[name]?.v) === identifierText(v);
      if (!other || other.id === p.id || !holds) a.setIdentity(key, p.id);
    }
    if (!merged) return p;
  }
  return p;
}

/** Folds `src` into `dst`; `src` becomes a tombstone and its identities point at `dst`. */
async function merge(a: Attempt, src: Profile, dst: Profile): Promise<void> {
  a.reshaped++;
  a.edit(src);
  a.edit(dst);
  for (const [name, p] of Object.entries(src.props)) setProp(dst, name, p.v, p.t, p.m);
  for (const id of src.anonymousIds) {
    if (!dst.anonymousIds.includes(id)) dst.anonymousIds.push(id);
    await a.identity(keyOf("a", id));
    a.setIdentity(keyOf("a", id), dst.id, { kind: "a", id });
  }
  // Ids src had dropped still lead to src, whose tombstone leads here.
  if (src.anonymousIdsDropped) dst.anonymousIdsDropped = (dst.anonymousIdsDropped ?? 0) + src.anonymousIdsDropped;
  capAnonymousIds(dst);
  for (const id of [...(src.userId !== undefined ? [src.userId] : []), ...(src.userIds ?? [])]) {
    await a.identity(keyOf("u", id));
    a.setIdentity(keyOf("u", id), dst.id, { kind: "u", id });
    if (id !== dst.userId && !dst.userIds?.includes(id)) (dst.userIds ??= []).push(id);
  }
  dst.merged = [...(dst.merged ?? []), src.id, ...(src.merged ?? [])];
  dst.firstSeen = Math.min(dst.firstSeen, src.firstSeen);
  dst.lastSeen = Math.max(dst.lastSeen, src.lastSeen);
  src.mergedInto = dst.id;
  a.changed(src);
  a.changed(dst);
}
