// example-policy: a site policy for gate (gate:plugin@0.2.0, policy-plugin world), in
// JavaScript. This is the component's entry: componentize-js builds it, with `rules.js` (read
// when the component is built: a component has no files at run time), into one component.

import { get } from 'gate:plugin/config@0.2.0';
import { log } from 'gate:plugin/log@0.2.0';
import { decide, readSettings } from './rules.js';

let rules;

/** The `policy` export the host calls: settings read once, then the pure `decide`. */
export const policy = {
  decide(event) {
    if (rules === undefined) {
      try {
        rules = readSettings(get);
      } catch (e) {
        // A misconfigured policy must not guess: trap, and the host's fallback decides.
        log('error', `example-policy: ${e.message}`);
        throw e;
      }
    }
    return decide(event, rules);
  },
};
