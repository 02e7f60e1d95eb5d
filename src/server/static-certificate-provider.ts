import { experimental } from "@grpc/grpc-js";

/**
 * Fixed TLS material for grpc-js's certificate-provider credentials, the only grpc-js server
 * credentials that can request a client certificate without requiring one.
 */
export class StaticCertificateProvider implements experimental.CertificateProvider {
  constructor(
    private readonly certificate: Buffer,
    private readonly privateKey: Buffer,
    private readonly caCertificate: Buffer,
  ) {}

  addCaCertificateListener(listener: experimental.CaCertificateUpdateListener): void {
    listener({ caCertificate: this.caCertificate });
  }

  removeCaCertificateListener(): void {}

  addIdentityCertificateListener(listener: experimental.IdentityCertificateUpdateListener): void {
    listener({ certificate: this.certificate, privateKey: this.privateKey });
  }

  removeIdentityCertificateListener(): void {}
}
