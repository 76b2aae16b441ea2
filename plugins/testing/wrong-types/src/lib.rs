//! wrong-types: exports `gate:plugin/policy@0.2.0#decide` by the contract's name but as
//! `decide(u32) -> u32`. `gate plugin check` and the gateway's start must refuse it as not
//! fitting the contract rather than call it.

wit_bindgen::generate!({ path: "wit", world: "wrong-types" });

struct WrongTypes;

impl exports::gate::plugin::policy::Guest for WrongTypes {
    fn decide(event: u32) -> u32 {
        event.wrapping_add(1)
    }
}

export!(WrongTypes);
