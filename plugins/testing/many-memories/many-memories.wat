;; many-memories: the "48 memories" attack of issue 10, as a hand-made component.
;;
;; A policy plugin (world `policy-plugin` of wit/gate-plugin.wit) whose core module has,
;; besides the canonical ABI's own memory, 48 extra linear memories of 32 MiB each
;; (512 pages of 64 KiB: 1.5 GiB together). The first `decide` fills every byte of every
;; extra memory, so all of it is resident, then grants whoever it is (3 s). A cap per
;; linear memory let this run at 830 MB RSS with every call granted; the host's cap is per
;; instance (`limits.memory_mb` for all memories and tables together), so the instance is
;; refused at instantiation and the host's fallback decides.
;;
;; Built into target/plugins/many-memories.wasm by `cargo xtask plugins` (the `wat` crate,
;; xtask/src/plugins.rs). No SDK, no WASI: the component imports nothing.
(component
  ;; gate:plugin/types@0.2.0, exactly as the contract declares them. Each type is exported
  ;; under its WIT name (component types used by an export must be named) and the named
  ;; type is what the later types and `decide` refer to.
  (type $direction' (enum "entry" "exit"))
  (export $direction "direction" (type $direction'))
  (type $timestamp' (record (field "unix-ms" s64) (field "weekday" u8) (field "minute-of-day" u16)))
  (export $timestamp "timestamp" (type $timestamp'))
  (type $credential-kind' (enum "face" "card" "pin" "nfc" "qr" "plate" "guard-release" "intercom"))
  (export $credential-kind "credential-kind" (type $credential-kind'))
  (type $liveness' (enum "live" "spoof" "unknown"))
  (export $liveness "liveness" (type $liveness'))
  (type $match-band' (enum "strong" "weak"))
  (export $match-band "match-band" (type $match-band'))
  (type $face-match' (record (field "band" $match-band) (field "liveness" $liveness)))
  (export $face-match "face-match" (type $face-match'))
  (type $visitor-pass' (record (field "host-subject" string) (field "valid-until-ms" s64)))
  (export $visitor-pass "visitor-pass" (type $visitor-pass'))
  (type $credential' (variant
    (case "face" $face-match)
    (case "card")
    (case "pin")
    (case "nfc")
    (case "qr" $visitor-pass)
    (case "plate")
    (case "guard-release")
    (case "intercom" string)))
  (export $credential "credential" (type $credential'))
  (type $role' (enum "resident" "staff" "visitor" "guard" "contractor"))
  (export $role "role" (type $role'))
  (type $subject' (record (field "id" string) (field "role" $role) (field "groups" (list string))))
  (export $subject "subject" (type $subject'))
  (type $prior-factor' (record (field "kind" $credential-kind) (field "subject-id" (option string)) (field "unix-ms" s64)))
  (export $prior-factor "prior-factor" (type $prior-factor'))
  (type $access-event' (record
    (field "id" string)
    (field "door" string)
    (field "direction" $direction)
    (field "time" $timestamp)
    (field "credential" $credential)
    (field "subject" (option $subject))
    (field "prior" (list $prior-factor))))
  (export $access-event "access-event" (type $access-event'))
  (type $escalation' (variant (case "call-resident" string) (case "call-guard")))
  (export $escalation "escalation" (type $escalation'))
  (type $decision' (variant
    (case "grant" u32)
    (case "deny" string)
    (case "need-factor" (list $credential-kind))
    (case "escalate" $escalation)))
  (export $decision "decision" (type $decision'))

  (core module $m
    ;; Memory 0 is the canonical ABI's: the host writes the access event here (through
    ;; `realloc`) and reads the decision from here.
    (memory (export "memory") 1)
    ;; The attack: 48 more memories of 32 MiB each.
    (memory $x0 512) (memory $x1 512) (memory $x2 512) (memory $x3 512)
    (memory $x4 512) (memory $x5 512) (memory $x6 512) (memory $x7 512)
    (memory $x8 512) (memory $x9 512) (memory $x10 512) (memory $x11 512)
    (memory $x12 512) (memory $x13 512) (memory $x14 512) (memory $x15 512)
    (memory $x16 512) (memory $x17 512) (memory $x18 512) (memory $x19 512)
    (memory $x20 512) (memory $x21 512) (memory $x22 512) (memory $x23 512)
    (memory $x24 512) (memory $x25 512) (memory $x26 512) (memory $x27 512)
    (memory $x28 512) (memory $x29 512) (memory $x30 512) (memory $x31 512)
    (memory $x32 512) (memory $x33 512) (memory $x34 512) (memory $x35 512)
    (memory $x36 512) (memory $x37 512) (memory $x38 512) (memory $x39 512)
    (memory $x40 512) (memory $x41 512) (memory $x42 512) (memory $x43 512)
    (memory $x44 512) (memory $x45 512) (memory $x46 512) (memory $x47 512)

    ;; Bump allocator for the host's writes into memory 0, from byte 1024 up; reset by
    ;; every `decide` (the event is not needed once it is decided).
    (global $heap (mut i32) (i32.const 1024))
    (global $touched (mut i32) (i32.const 0))

    (func (export "realloc") (param $old i32) (param $old-size i32) (param $align i32) (param $size i32) (result i32)
      (local $p i32)
      (local.set $p
        (i32.and
          (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
          (i32.sub (i32.const 0) (local.get $align))))
      (global.set $heap (i32.add (local.get $p) (local.get $size)))
      (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
        (then unreachable))
      (local.get $p))

    ;; decide(event-ptr) -> decision-ptr
    (func (export "decide") (param $event i32) (result i32)
      (if (i32.eqz (global.get $touched))
        (then
          ;; Write every byte of every extra memory (32 MiB = 33554432 bytes each), so the
          ;; whole 1.5 GiB is resident.
          (memory.fill $x0 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x1 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x2 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x3 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x4 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x5 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x6 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x7 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x8 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x9 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x10 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x11 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x12 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x13 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x14 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x15 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x16 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x17 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x18 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x19 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x20 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x21 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x22 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x23 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x24 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x25 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x26 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x27 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x28 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x29 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x30 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x31 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x32 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x33 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x34 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x35 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x36 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x37 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x38 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x39 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x40 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x41 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x42 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x43 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x44 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x45 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x46 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (memory.fill $x47 (i32.const 0) (i32.const 1) (i32.const 33554432))
          (global.set $touched (i32.const 1))))
      (global.set $heap (i32.const 1024))
      ;; The decision at byte 16 of memory 0: case 0 (`grant`), its u32 at byte 20.
      (i32.store8 (i32.const 16) (i32.const 0))
      (i32.store (i32.const 20) (i32.const 3000))
      (i32.const 16))
  )
  (core instance $i (instantiate $m))

  ;; Lifted with the canonical ABI: the event has more than 16 flat values, so the core
  ;; function takes a pointer to it (written through `realloc`) and returns a pointer to
  ;; the decision.
  (func $decide (param "event" $access-event) (result $decision)
    (canon lift (core func $i "decide") (memory $i "memory") (realloc (func $i "realloc"))))

  ;; The `gate:plugin/policy@0.2.0` interface the policy-plugin world exports.
  (instance $policy
    (export "access-event" (type $access-event))
    (export "decision" (type $decision))
    (export "decide" (func $decide)))
  (export "gate:plugin/policy@0.2.0" (instance $policy))
)
