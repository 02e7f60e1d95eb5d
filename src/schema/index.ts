// What every configuration schema shares (issue 12 §5): valibot issues turned into the project's
// "path: message" problems, every one of them at once, and the validated result deep-frozen.
// A bottom layer like errors/ and log/: it imports valibot and yaml, and nothing of the project.
import * as v from "valibot";
import { parseDocument } from "yaml";

export type Issue = v.BaseIssue<unknown>;

/** A list field whose items are named in problems by one of their fields: `rules[0] (release).keys`. */
export type ItemLabels = Readonly<Record<string, string>>;

/**
 * An issue's path as the problems spell it: `a.b[0].c`; an item of a list named in `labels` also
 * shows its label field when that is a non-empty string.
 */
export function pathOf(issue: Issue, labels: ItemLabels = {}): string {
  let out = "";
  let parentKey: unknown;
  for (const item of issue.path ?? []) {
    const key = item.key;
    if (typeof key === "number") {
      out += `[${key}]`;
      const field = typeof parentKey === "string" ? labels[parentKey] : undefined;
      const label = field === undefined || !isMapping(item.value) ? undefined : item.value[field];
      if (typeof label === "string" && label !== "") out += ` (${label})`;
    } else out += out === "" ? String(key) : `.${String(key)}`;
    parentKey = key;
  }
  return out;
}

/**
 * Every issue as "path: message" (a problem of the whole value: its message alone), unknown
 * settings first (most often a typo, which may explain the problems that follow), then the
 * others in the order the schema met them.
 */
export function problemsOf(issues: readonly Issue[], labels?: ItemLabels): string[] {
  const unknown = (i: Issue): boolean => i.type === "never";
  return [...issues.filter(unknown), ...issues.filter((i) => !unknown(i))].map((i) => {
    const where = pathOf(i, labels);
    return where === "" ? i.message : `${where}: ${i.message}`;
  });
}

/** Validates `input` against `schema`: the output, or every problem ("path: message"). */
export function validate<S extends v.GenericSchema>(schema: S, input: unknown, labels?: ItemLabels): { ok: true; value: v.InferOutput<S> } | { ok: false; problems: string[] } {
  const r = v.safeParse(schema, input);
  return r.success ? { ok: true, value: r.output } : { ok: false, problems: problemsOf(r.issues, labels) };
}

/**
 * YAML (or JSON, which is YAML) text as a value, or each syntax error as "message at line L,
 * column C". The yaml library's pretty message goes on with a code frame that quotes the source
 * line, and a configuration line may hold a secret (a PIN or a password written where it does not
 * belong): only the first line of each message is kept. Warnings (an unknown tag...) are not
 * printed either, as yaml's parse() would print them, code frame and all, on stderr.
 */
export function parseYamlText(text: string): { ok: true; value: unknown } | { ok: false; problems: string[] } {
  const doc = parseDocument(text, { uniqueKeys: true, prettyErrors: true });
  if (doc.errors.length > 0) return { ok: false, problems: doc.errors.map((e) => (e.message.split("\n")[0] ?? e.message).replace(/:$/, "")) };
  return { ok: true, value: doc.toJS() };
}

/** Freezes plain objects and arrays all the way down (Buffers and class instances are left as they are). */
export function deepFreeze<T>(value: T): T {
  if (typeof value !== "object" || value === null || Object.isFrozen(value)) return value;
  const proto = Object.getPrototypeOf(value) as unknown;
  if (!Array.isArray(value) && proto !== Object.prototype && proto !== null) return value;
  Object.freeze(value);
  for (const child of Object.values(value)) deepFreeze(child);
  return value;
}

/** A path item for an issue raised by a raw check about a part of its input. */
export function at(input: unknown, key: string | number): v.IssuePathItem {
  const parent = input as Record<string | number, unknown>;
  return Array.isArray(input)
    ? { type: "array", origin: "value", input: input as unknown[], key: key as number, value: parent[key] }
    : { type: "object", origin: "value", input: parent as Record<string, unknown>, key: String(key), value: parent[key] };
}

/** A string of at least one character; `message` for anything else. */
export function nonEmptyString(message = "must be a non-empty string") {
  return v.pipe(v.string(message), v.minLength(1, message));
}

export function isMapping(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

/**
 * A mapping with these entries and no other key ("k: unknown setting", each one); a missing
 * required entry is "k: required", or the text `required` gives for it.
 */
export function mapping<E extends v.ObjectEntries>(entries: E, required: Readonly<Record<string, string>> = {}, notMapping = "must be a mapping") {
  // objectWithRest alone would take a list for a mapping (its indexes as unknown settings).
  return v.pipe(
    v.custom<Record<string, unknown>>(isMapping, notMapping),
    v.objectWithRest(entries, v.never("unknown setting"), (issue) => {
      const key = issue.path?.[0]?.key;
      return typeof key === "string" ? (required[key] ?? "required") : notMapping;
    }),
  );
}
