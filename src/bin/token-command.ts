import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { initToken, listTokens, loadModule } from "../hsm/index.js";
import { need } from "./cli-args.js";

export function tokenInit(args: string[]): void {
  const { values } = parseArgs({
    args,
    options: { "module": { type: "string" }, "label": { type: "string" }, "so-pin-file": { type: "string" }, "pin-file": { type: "string" }, "if-missing": { type: "boolean" } },
  });
  const read = (f: string): string => readFileSync(f, "utf8").replace(/\r?\n$/, "");
  const label = need(values.label, "--label");
  if (values["if-missing"] && listTokens(loadModule(need(values.module, "--module"))).some((t) => t.label === label)) {
    console.log(`token "${label}" already exists`);
    return;
  }
  const info = initToken(need(values.module, "--module"), label, read(need(values["so-pin-file"], "--so-pin-file")), read(need(values["pin-file"], "--pin-file")));
  console.log(`token "${info.label}" initialized (serial ${info.serial})`);
}
