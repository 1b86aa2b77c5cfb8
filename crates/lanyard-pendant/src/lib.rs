//! The pendant side: GATT profile, frame packetizer, and a simulator that speaks synthesized utterances.
