//! A `send` component that misbehaves on request, to prove the host contains
//! it: a frame whose body contains `trap` panics, `loop` spins forever,
//! `hog` grows memory without bound. Anything else is answered with
//! `{"type":"alive"}`, showing that the next invocation works.

#[cfg(target_arch = "wasm32")]
mod guest {
    wit_bindgen::generate!({ path: "../../../../wit", world: "send-component" });

    use chat::platform::delivery;
    use chat::platform::frames::InboundFrame;
    use chat::platform::types::Message;
    use exports::chat::platform::send_handler::Guest;

    struct Faulty;

    impl Guest for Faulty {
        fn handle_frames(frames: Vec<InboundFrame>) -> Vec<Message> {
            for frame in frames {
                if frame.body.contains("trap") {
                    panic!("asked to trap");
                } else if frame.body.contains("loop") {
                    #[allow(clippy::empty_loop)]
                    loop {}
                } else if frame.body.contains("hog") {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(vec![1; 1 << 20]);
                    }
                } else {
                    delivery::send_to_connection(frame.connection, r#"{"type":"alive"}"#);
                }
            }
            Vec::new()
        }
    }

    export!(Faulty);
}
