/**
 * The identifier rules of PRODUCT.md §8 (README "Identity resolution"): which Customer Model
 * properties identify a person, in priority order, and whether they may join two different userIds.
 */
export interface IdentityRules {
  /** Highest priority first. */
  identifiers: string[];
  /** false (default): two profiles with different userIds are never merged by identifiers. */
  mergeUserIds: boolean;
}

export const NO_IDENTIFIERS: IdentityRules = { identifiers: [], mergeUserIds: false };

/** From a loaded configuration's `identity` (absent: no identifiers). */
export const rulesOf = (c: { identity?: IdentityRules }): IdentityRules => c.identity ?? NO_IDENTIFIERS;

/** A value an identifier can match on: null, undefined and "" identify nobody. */
export const present = (v: unknown): boolean => v !== null && v !== undefined && v !== "";

/** The text an identifier value is indexed and compared by (1 and "1" differ). */
export const identifierText = (v: unknown): string => JSON.stringify(v);

export interface Identified {
  userId?: string;
  /** Other userIds merged into the profile (an alias, or identifiers with mergeUserIds). */
  userIds?: string[];
  props: Record<string, { v: unknown }>;
}

const userIdsOf = (p: Identified): string[] => [...(p.userId !== undefined ? [p.userId] : []), ...(p.userIds ?? [])];

/**
 * Whether identifiers make two profiles one person: the highest-priority identifier present on
 * both decides (equal: yes; different: no, whatever lower ones say); none on both: no. With
 * mergeUserIds false, profiles of two different userIds are never one by identifiers.
 */
export function sameByIdentifiers(a: Identified, b: Identified, rules: IdentityRules): boolean {
  if (!rules.mergeUserIds) {
    const ua = userIdsOf(a);
    const ub = userIdsOf(b);
    if (ua.length && ub.length && !ua.some((u) => ub.includes(u))) return false;
  }
  for (const name of rules.identifiers) {
    const va = a.props[name]?.v;
    const vb = b.props[name]?.v;
    if (present(va) && present(vb)) return identifierText(va) === identifierText(vb);
  }
  return false;
}
