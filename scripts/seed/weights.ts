/**
 * Synthetic weights for local development: for every model of the Llama 2 family, a small
 * Hugging Face–layout folder (the layout of the `…-hf` repositories the Hub API serves), with the
 * license texts the gateway has loaded and the family's notice, uploaded through the same code as
 * `npm run weights:upload`. The bytes are deterministic, so a second run finds every revision
 * already published and uploads nothing.
 */
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { createDatabase } from "../../worker/db/client";
import { currentLicenseVersion, documentText } from "../../worker/licenses/store";
import { llama2 } from "../../worker/policy/families/llama-2";
import { persistDir } from "../lib/local-state";
import { bindingBucket, uploadWeights, type WeightsUploadReport } from "../lib/weights";

/** Where the synthetic folders are written: next to the local state, so a clean start clears them. */
export function demoWeightsDir(): string {
  return join(dirname(persistDir()), "demo-weights");
}

/** The real architecture numbers of each size, so `config.json` reads like the real one. */
const ARCHITECTURE = {
  "7B": { hidden: 4096, intermediate: 11008, layers: 32, heads: 32, kvHeads: 32 },
  "13B": { hidden: 5120, intermediate: 13824, layers: 40, heads: 40, kvHeads: 40 },
  "70B": { hidden: 8192, intermediate: 28672, layers: 80, heads: 64, kvHeads: 8 },
} as const;

/** Deterministic pseudo-random bytes (xorshift), different per seed. */
export function syntheticBytes(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

function seedOf(text: string): number {
  let h = 2166136261;
  for (const ch of text) h = Math.imul(h ^ ch.charCodeAt(0), 16777619);
  return h >>> 0;
}

/** A valid safetensors file holding one BF16 tensor of synthetic values. */
function safetensors(tensor: string, rows: number, cols: number, seed: number): Uint8Array {
  const data = syntheticBytes(rows * cols * 2, seed);
  const header = JSON.stringify({
    __metadata__: { format: "pt", note: "synthetic modelgate demo weights, not a real model" },
    [tensor]: { dtype: "BF16", shape: [rows, cols], data_offsets: [0, data.byteLength] },
  });
  // The header is padded with spaces to a multiple of 8, as the format recommends.
  const headerBytes = new TextEncoder().encode(header.padEnd(Math.ceil(header.length / 8) * 8, " "));
  const out = new Uint8Array(8 + headerBytes.byteLength + data.byteLength);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.byteLength), true);
  out.set(headerBytes, 8);
  out.set(data, 8 + headerBytes.byteLength);
  return out;
}

const json = (value: unknown) => `${JSON.stringify(value, null, 2)}\n`;

/** The files of one model's synthetic Hugging Face–layout folder, by path. */
export function syntheticModelFiles(
  model: (typeof llama2.models)[number],
  texts: { license: string; aup: string; notice: string },
): Record<string, string | Uint8Array> {
  const arch = ARCHITECTURE[model.parameters as keyof typeof ARCHITECTURE];
  const seed = seedOf(model.id);
  const shard1 = safetensors("model.embed_tokens.weight", 128, 1024, seed);
  const shard2 = safetensors("lm_head.weight", 96, 1024, seed + 1);
  return {
    "config.json": json({
      architectures: ["LlamaForCausalLM"],
      model_type: "llama",
      hidden_size: arch.hidden,
      intermediate_size: arch.intermediate,
      num_hidden_layers: arch.layers,
      num_attention_heads: arch.heads,
      num_key_value_heads: arch.kvHeads,
      max_position_embeddings: 4096,
      rms_norm_eps: 1e-5,
      vocab_size: 32000,
      bos_token_id: 1,
      eos_token_id: 2,
      torch_dtype: "float16",
      _modelgate_note: "synthetic demo weights",
    }),
    "generation_config.json": json({
      bos_token_id: 1,
      eos_token_id: 2,
      pad_token_id: 0,
      ...(model.variant === "chat" ? { do_sample: true, temperature: 0.6, top_p: 0.9 } : {}),
    }),
    "model-00001-of-00002.safetensors": shard1,
    "model-00002-of-00002.safetensors": shard2,
    "model.safetensors.index.json": json({
      metadata: { total_size: 2 * (128 + 96) * 1024 },
      weight_map: {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "lm_head.weight": "model-00002-of-00002.safetensors",
      },
    }),
    "tokenizer.json": json({ version: "1.0", model: { type: "BPE", vocab: { "<unk>": 0, "<s>": 1, "</s>": 2 } } }),
    "tokenizer.model": syntheticBytes(16 * 1024, seedOf("llama-2 tokenizer")),
    "tokenizer_config.json": json({
      bos_token: "<s>",
      eos_token: "</s>",
      unk_token: "<unk>",
      model_max_length: 4096,
      tokenizer_class: "LlamaTokenizer",
    }),
    "special_tokens_map.json": json({ bos_token: "<s>", eos_token: "</s>", unk_token: "<unk>" }),
    LICENSE: texts.license,
    "USE_POLICY.md": texts.aup,
    NOTICE: `${texts.notice}\n`,
  };
}

/** Writes a model's synthetic folder afresh and returns its path. */
function writeModelFolder(root: string, files: Record<string, string | Uint8Array>, modelId: string): string {
  const dir = join(root, modelId);
  rmSync(dir, { recursive: true, force: true });
  for (const [path, content] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, path)), { recursive: true });
    writeFileSync(join(dir, path), content);
  }
  return dir;
}

/**
 * Seeds synthetic weights for every Llama 2 model into the local bindings, with the license and
 * AUP texts currently loaded. Unchanged models are left alone.
 */
export async function seedSyntheticWeights(env: { DB: D1Database; WEIGHTS: R2Bucket }): Promise<WeightsUploadReport[]> {
  const db = createDatabase(env.DB);
  const license = await currentLicenseVersion(db, llama2.id);
  if (!license) throw new Error("load the Llama 2 license texts before seeding weights");
  const texts = {
    license: (await documentText(db, license.licenseSha256)) ?? "",
    aup: (await documentText(db, license.aupSha256)) ?? "",
    notice: llama2.noticeText,
  };
  const root = demoWeightsDir();
  const reports: WeightsUploadReport[] = [];
  for (const model of llama2.models) {
    const dir = writeModelFolder(root, syntheticModelFiles(model, texts), model.id);
    reports.push(await uploadWeights({ db: env.DB, bucket: bindingBucket(env.WEIGHTS) }, { model: model.id, dir }));
  }
  return reports;
}
