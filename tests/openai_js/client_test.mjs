// client_test.mjs -- kvmesh node through the official OpenAI JavaScript client
// (npm `openai`), unchanged: completions and chat, plain and streamed, the
// model list, the API key, and an error surfacing as the client's APIError.
// Greedy decoding makes the checks exact: streamed text equals plain text.
// usage: node client_test.mjs BASE_URL API_KEY
import OpenAI from 'openai';
import assert from 'node:assert/strict';

const [base, key] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: key, maxRetries: 0 });
let checks = 0;
const check = (cond, what) => { assert.ok(cond, what); checks++; };

const models = await client.models.list();
const model = models.data[0].id;
check(model === 'tiny-f16', `model id ${model}`);

// completions: plain, then streamed (the second is a cached full hit)
const params = { model, prompt: 'The OpenAI client says: one, two,', max_tokens: 8, temperature: 0 };
const plain = await client.completions.create(params);
check(plain.object === 'text_completion', 'completion object');
check(typeof plain.choices[0].text === 'string', 'completion text');
check(plain.usage.prompt_tokens > 0 && plain.usage.completion_tokens > 0, 'completion usage');
let streamed = '';
let finish = null;
for await (const chunk of await client.completions.create({ ...params, stream: true })) {
  streamed += chunk.choices[0]?.text ?? '';
  finish = chunk.choices[0]?.finish_reason ?? finish;
}
check(streamed === plain.choices[0].text, `streamed completion '${streamed}' vs '${plain.choices[0].text}'`);
check(finish === plain.choices[0].finish_reason, 'finish_reason');

// chat: plain, then streamed
const messages = [
  { role: 'system', content: 'You answer in one word.' },
  { role: 'user', content: 'Name a colour.' },
];
const chat = await client.chat.completions.create({ model, messages, max_tokens: 6, temperature: 0 });
check(chat.object === 'chat.completion', 'chat object');
check(chat.choices[0].message.role === 'assistant', 'chat role');
let chatStreamed = '';
let sawRole = false;
const stream = await client.chat.completions.create({ model, messages, max_tokens: 6, temperature: 0, stream: true,
                                                      stream_options: { include_usage: true } });
let usage = null;
for await (const chunk of stream) {
  if (chunk.usage) usage = chunk.usage;
  const d = chunk.choices[0]?.delta;
  if (d?.role === 'assistant') sawRole = true;
  chatStreamed += d?.content ?? '';
}
check(sawRole, 'first delta carries the role');
check(chatStreamed === chat.choices[0].message.content, `streamed chat '${chatStreamed}'`);
check(usage && usage.prompt_tokens === chat.usage.prompt_tokens, 'streamed usage');

// an invalid request is the client's APIError with OpenAI's error object
try {
  await client.completions.create({ model, prompt: 'x', temperature: 7 });
  assert.fail('temperature 7 was accepted');
} catch (e) {
  check(e instanceof OpenAI.APIError && e.status === 400, `status ${e.status}`);
  check(e.type === 'invalid_request_error' && e.param === 'temperature', `error type ${e.type}, param ${e.param}`);
}

// a wrong key is refused
const wrong = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'not-the-key', maxRetries: 0 });
try {
  await wrong.models.list();
  assert.fail('wrong key accepted');
} catch (e) {
  check(e.status === 401, `wrong key: status ${e.status}`);
}

// a burst larger than the node's room (run.sh: --queue 4): the 503s say when
// to come back (retry-after-ms, Retry-After), spaced at the pace the node
// serves, and the client's own retries (its default: 2) get every request
// answered
const metric = async (series) => {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.split(' ')[1]) : 0;
};
const refusedBefore = await metric('kvmesh_requests_total{result="refused"}');
const retrying = new OpenAI({ baseURL: `${base}/v1`, apiKey: key }); // maxRetries: the default
const BURST = 24;
const answers = await Promise.allSettled(Array.from({ length: BURST }, (_, i) =>
  retrying.completions.create({ model, prompt: `Burst request number ${i}:`, max_tokens: 4, temperature: 0 })));
const failed = answers.filter((a) => a.status === 'rejected');
check(failed.length === 0, `burst: ${failed.length} of ${BURST} failed: ${failed[0]?.reason}`);
check(answers.every((a) => a.status !== 'fulfilled' || a.value.object === 'text_completion'), 'burst answers');
const refused = (await metric('kvmesh_requests_total{result="refused"}')) - refusedBefore;
check(refused > 0, 'the burst was refused in part at first (else this shows nothing)');
console.log(`openai-js: burst of ${BURST}: all answered, ${refused} refusals retried by the client`);

console.log(`openai-js: ${checks} checks passed`);
