import { cloudflareTest, readD1Migrations } from "@cloudflare/vitest-plugin";
import { exportJWK, generateKeyPair } from "jose";
import { defineConfig } from "vitest/config";

// Tests run inside workerd with the bindings of wrangler.toml (D1, R2, rate limiter, send_email),
// plus test-only bindings: the migrations to apply, a throwaway Access signing key whose public
// half is the JWKS the gateway trusts, throwaway Ed25519 keys for download links and audit
// checkpoints, and the URLs of the inference-backend simulators that test/global-setup.ts starts
// in Node.
export default defineConfig(async () => {
  const migrations = await readD1Migrations("./migrations");
  const { publicKey, privateKey } = await generateKeyPair("ES256", { extractable: true });
  const kid = "test-access-key";
  const publicJwk = { ...(await exportJWK(publicKey)), kid, alg: "ES256", use: "sig" };
  const privateJwk = { ...(await exportJWK(privateKey)), kid, alg: "ES256" };
  const signing = await generateKeyPair("Ed25519", { extractable: true });
  const downloadKey = { ...(await exportJWK(signing.privateKey)), kid: "test-download-key", alg: "EdDSA" };
  const auditSigning = await generateKeyPair("Ed25519", { extractable: true });
  const auditKey = { ...(await exportJWK(auditSigning.privateKey)), kid: "test-audit-key", alg: "EdDSA" };
  return {
    plugins: [
      cloudflareTest(({ inject }) => ({
        wrangler: { configPath: "./wrangler.toml" },
        miniflare: {
          bindings: {
            TEST_MIGRATIONS: migrations,
            ACCESS_JWKS: JSON.stringify({ keys: [publicJwk] }),
            DEV_LOGIN: "1",
            TEST_ACCESS_PRIVATE_JWK: JSON.stringify(privateJwk),
            DOWNLOAD_SIGNING_KEYS: JSON.stringify({ keys: [downloadKey] }),
            AUDIT_SIGNING_KEYS: JSON.stringify({ keys: [auditKey] }),
            TEST_BACKEND_URLS: JSON.stringify(inject("backendUrls")),
            TEST_STRIPE_URL: inject("stripeUrl"),
          },
        },
      })),
    ],
    test: {
      include: ["test/**/*.test.ts"],
      exclude: ["test/browser/**"],
      setupFiles: ["./test/setup.ts"],
      globalSetup: ["./test/global-setup.ts"],
    },
  };
});
