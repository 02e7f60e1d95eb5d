import { ProtoMessage, ProtoWriter } from "./protobuf.js";

/** hsm_signer.v1 messages as the clients use them; field numbers from proto/hsm_signer/v1/signer.proto. */
export const SIGNER_SERVICE = "/hsm_signer.v1.Signer/";

export interface SignRequest {
  keyId: string;
  payload?: Buffer;
  digest?: Buffer;
  hashAlgorithm?: string;
  keySpec?: string;
  keyVersion?: number;
}

export interface AuditReceipt {
  sequence: number;
  lineHash: string;
}

export interface SignResponse {
  keyId: string;
  signature: Buffer;
  signingAlgorithm: string;
  keySpec: string;
  certificateChain: Buffer[];
  keyVersion: number;
  requestId: string;
  receipt: AuditReceipt | undefined;
}

export interface KeyInfo {
  keyId: string;
  keySpec: string;
  signingAlgorithm: string;
  hashAlgorithm: string;
  certificateSubject: string;
  certificateIssuer: string;
  notBefore: string;
  notAfter: string;
  keyVersion: number;
  certificateSha256: string;
}

export function encodeSignRequest(r: SignRequest): Buffer {
  return new ProtoWriter().string(1, r.keyId).bytes(2, r.payload).bytes(3, r.digest).string(4, r.hashAlgorithm).string(5, r.keySpec).uint(6, r.keyVersion).finish();
}

export function decodeSignResponse(b: Buffer): SignResponse {
  const m = new ProtoMessage(b);
  const r = m.message(8);
  return {
    keyId: m.string(1),
    signature: m.bytes(2),
    signingAlgorithm: m.string(3),
    keySpec: m.string(4),
    certificateChain: m.repeatedBytes(5),
    keyVersion: m.uint(6),
    requestId: m.string(7),
    receipt: r ? { sequence: r.uint(1), lineHash: r.string(2) } : undefined,
  };
}

/** DescribeKeyRequest and GetCertificateChainRequest share their shape. */
export function encodeKeyRequest(keyId: string, keyVersion?: number): Buffer {
  return new ProtoWriter().string(1, keyId).uint(2, keyVersion).finish();
}

function decodeKeyInfo(m: ProtoMessage): KeyInfo {
  return {
    keyId: m.string(1),
    keySpec: m.string(2),
    signingAlgorithm: m.string(3),
    hashAlgorithm: m.string(4),
    certificateSubject: m.string(5),
    certificateIssuer: m.string(6),
    notBefore: m.string(7),
    notAfter: m.string(8),
    keyVersion: m.uint(9),
    certificateSha256: m.string(10),
  };
}

export function decodeDescribeKeyResponse(b: Buffer): KeyInfo | undefined {
  const k = new ProtoMessage(b).message(1);
  return k ? decodeKeyInfo(k) : undefined;
}

export function decodeListKeysResponse(b: Buffer): KeyInfo[] {
  return new ProtoMessage(b).messages(1).map(decodeKeyInfo);
}

export function decodeCertificateChainResponse(b: Buffer): { keyId: string; certificateChain: Buffer[]; keyVersion: number } {
  const m = new ProtoMessage(b);
  return { keyId: m.string(1), certificateChain: m.repeatedBytes(2), keyVersion: m.uint(3) };
}
