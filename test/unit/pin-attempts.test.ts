import assert from "node:assert/strict";
import { pinAttemptRefusal } from "../../src/hsm/hsm-token.js";

// PKCS#11 v2.40 token flags (CK_TOKEN_INFO.flags).
const CKF_LOGIN_REQUIRED = 0x4;
const CKF_USER_PIN_INITIALIZED = 0x8;
const CKF_TOKEN_INITIALIZED = 0x400;
const CKF_USER_PIN_COUNT_LOW = 0x10000;
const CKF_USER_PIN_FINAL_TRY = 0x20000;
const CKF_USER_PIN_LOCKED = 0x40000;

describe("pinAttemptRefusal: a login that could lock the token is not tried", () => {
  const usual = CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED | CKF_TOKEN_INITIALIZED;

  it("tries the PIN on a token with attempts to spare, even when they run low", () => {
    assert.equal(pinAttemptRefusal(usual), undefined);
    assert.equal(pinAttemptRefusal(usual | CKF_USER_PIN_COUNT_LOW), undefined);
  });

  it("does not spend the last attempt, and says how to get past it", () => {
    const why = pinAttemptRefusal(usual | CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY);
    assert.match(why ?? "", /one user PIN attempt left \(CKF_USER_PIN_FINAL_TRY\)/);
    assert.match(why ?? "", /pkcs11-tool --login --test/);
  });

  it("does not try a locked PIN", () => {
    assert.match(pinAttemptRefusal(usual | CKF_USER_PIN_LOCKED) ?? "", /locked on the token \(CKF_USER_PIN_LOCKED\)/);
    assert.match(pinAttemptRefusal(usual | CKF_USER_PIN_LOCKED | CKF_USER_PIN_FINAL_TRY) ?? "", /locked/);
  });
});
