// The rules of example-policy, checked natively: `node --test`.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SECOND_FACTORS, SettingsError, decide, readSettings } from './rules.js';

// Monday 2026-11-23 12:00 at the site.
const NOON = { unixMs: 1_795_406_400_000n, weekday: 0, minuteOfDay: 12 * 60 };

const rules = (settings = {}) => readSettings((key) => settings[key]);

function event(credential, { role, direction = 'entry', minuteOfDay = NOON.minuteOfDay, prior = [] } = {}) {
  const subject = role === undefined ? undefined : { id: 'r-0001', role, groups: [] };
  return { id: 'e-1', door: 'front-gate', direction, time: { ...NOON, minuteOfDay }, credential, subject, prior };
}

const card = { tag: 'card' };
const face = (liveness) => ({ tag: 'face', val: { band: 'strong', liveness } });
const grant = (openMs) => ({ tag: 'grant', val: openMs });
const deny = (reason) => ({ tag: 'deny', val: reason });

test('residents enter with a card and strangers do not', () => {
  assert.deepEqual(decide(event(card, { role: 'resident' }), rules()), grant(5000));
  assert.deepEqual(decide(event(card), rules()), deny('unknown credential'));
});

test('face is never enough alone and a spoof is denied', () => {
  assert.deepEqual(decide(event(face('live'), { role: 'resident' }), rules()), { tag: 'need-factor', val: [...SECOND_FACTORS] });
  assert.deepEqual(decide(event(face('spoof'), { role: 'resident' }), rules()), deny('liveness check failed'));
  const before = { kind: 'face', subjectId: 'r-0001', unixMs: NOON.unixMs - 2000n };
  assert.deepEqual(decide(event(card, { role: 'resident', prior: [before] }), rules()), grant(5000));
  const other = { kind: 'face', subjectId: 'r-0002', unixMs: NOON.unixMs - 2000n };
  assert.deepEqual(decide(event(card, { role: 'resident', prior: [other] }), rules()), deny('factor mismatch'));
});

test('staff enter within their hours and always leave', () => {
  assert.deepEqual(decide(event(card, { role: 'staff' }), rules()), grant(5000));
  assert.deepEqual(decide(event(card, { role: 'staff', minuteOfDay: 6 * 60 }), rules()), deny('outside hours'));
  assert.deepEqual(decide(event(card, { role: 'staff', direction: 'exit', minuteOfDay: 6 * 60 }), rules()), grant(5000));
});

test('visitor passes open until they expire and visitors without one call the guard', () => {
  const visitorPass = (until) => ({ tag: 'qr', val: { hostSubject: 'r-0001', validUntilMs: until } });
  assert.deepEqual(decide(event(visitorPass(NOON.unixMs + 1n), { role: 'visitor' }), rules()), grant(5000));
  assert.deepEqual(decide(event(visitorPass(NOON.unixMs - 1n), { role: 'visitor' }), rules()), deny('visitor pass expired'));
  assert.deepEqual(decide(event({ tag: 'nfc' }, { role: 'visitor' }), rules()), { tag: 'escalate', val: { tag: 'call-guard' } });
});

test('settings are read and a bad one names its key', () => {
  assert.deepEqual(decide(event({ tag: 'guard-release' }), rules({ 'open-ms': '8000' })), grant(8000));
  assert.throws(() => rules({ 'staff-hours': 'sometimes' }), (e) => e instanceof SettingsError && /staff-hours/.test(e.message));
  assert.throws(() => rules({ 'open-ms': '-1' }), (e) => e instanceof SettingsError && /open-ms/.test(e.message));
});
