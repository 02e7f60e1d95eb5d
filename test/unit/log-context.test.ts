import assert from "node:assert/strict";
import { createLogger, logContext, withLogContext, withoutLogContext } from "../../src/log/index.js";

describe("log context: every line written while a request is handled carries its request id", () => {
  const capture = (): { lines: Record<string, unknown>[]; logger: ReturnType<typeof createLogger> } => {
    const lines: Record<string, unknown>[] = [];
    return { lines, logger: createLogger("debug", (l) => void lines.push(JSON.parse(l) as Record<string, unknown>)) };
  };

  it("adds the context's fields to lines of any logger, across awaits, timers and promise callbacks", async () => {
    const { lines, logger } = capture();
    await withLogContext({ requestId: "r1" }, async () => {
      logger.info("sync");
      await new Promise((r) => setTimeout(r, 1));
      logger.warn("after a timer");
      await Promise.resolve().then(() => logger.error("in a then", { error: new Error("x") }));
    });
    logger.info("outside");
    assert.deepEqual(
      lines.map((l) => [l.msg, l.requestId]),
      [
        ["sync", "r1"],
        ["after a timer", "r1"],
        ["in a then", "r1"],
        ["outside", undefined],
      ],
    );
  });

  it("fields at the call site win; nested contexts add up; secrets stay redacted; withoutLogContext leaves it", () => {
    const { lines, logger } = capture();
    withLogContext({ requestId: "outer", method: "Sign" }, () => {
      withLogContext({ requestId: "inner", pin: "1234" }, () => {
        assert.deepEqual(logContext(), { requestId: "inner", method: "Sign", pin: "1234" });
        logger.info("nested", { method: "ListKeys" });
      });
      withoutLogContext(() => logger.info("detached"));
    });
    assert.equal(lines[0]?.requestId, "inner");
    assert.equal(lines[0]?.method, "ListKeys");
    assert.equal(lines[0]?.pin, "[redacted]");
    assert.equal(lines[1]?.requestId, undefined);
  });
});
