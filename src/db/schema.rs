// The diesel schema, written to match migrations/{postgres,sqlite}: one schema for both.

diesel::table! {
    schools (id) {
        id -> Text,
        name -> Text,
        time_zone -> Text,
        event_seq -> BigInt,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        quiet_hours_start -> Nullable<Text>,
        quiet_hours_end -> Nullable<Text>,
        notice_seq -> BigInt,
        phone_region -> Text,
        digest_at -> Nullable<Text>,
        digest_done_on -> Nullable<Text>,
        ready_when_stations_done -> Bool,
        sourced_id -> Nullable<Text>,
    }
}

diesel::table! {
    counters (id) {
        id -> Text,
        school_id -> Text,
        number -> Integer,
        name -> Text,
        is_open -> Bool,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    users (id) {
        id -> Text,
        school_id -> Nullable<Text>,
        role -> Text,
        display_name -> Text,
        email -> Nullable<Text>,
        phone -> Nullable<Text>,
        password_hash -> Nullable<Text>,
        allergies -> Text,
        locale -> Text,
        active -> Bool,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        inbox_seq -> BigInt,
        sourced_id -> Nullable<Text>,
    }
}

diesel::table! {
    inbox_messages (id) {
        id -> Text,
        user_id -> Text,
        seq -> BigInt,
        kind -> Text,
        title -> Text,
        body -> Text,
        order_id -> Nullable<Text>,
        created_at -> Timestamp,
        read_at -> Nullable<Timestamp>,
        deleted_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    guardian_links (guardian_id, student_id) {
        guardian_id -> Text,
        student_id -> Text,
        relationship -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    refresh_tokens (id) {
        id -> Text,
        user_id -> Text,
        token_hash -> Text,
        family_id -> Text,
        expires_at -> Timestamp,
        revoked_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    meals (id) {
        id -> Text,
        school_id -> Text,
        name -> Text,
        price_cents -> BigInt,
        allergens -> Text,
        available -> Bool,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        station_id -> Nullable<Text>,
    }
}

diesel::table! {
    stations (id) {
        id -> Text,
        school_id -> Text,
        name -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    rfid_cards (id) {
        id -> Text,
        school_id -> Text,
        student_id -> Text,
        card_uid -> Text,
        status -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    readers (id) {
        id -> Text,
        school_id -> Text,
        counter_id -> Text,
        name -> Text,
        secret_hash -> Text,
        last_seen_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
        key_version -> Integer,
        active -> Bool,
    }
}

diesel::table! {
    pickup_codes (id) {
        id -> Text,
        school_id -> Text,
        student_id -> Text,
        counter_id -> Text,
        code_mac -> Text,
        status -> Text,
        attempts -> Integer,
        requested_by -> Text,
        created_at -> Timestamp,
        expires_at -> Timestamp,
        used_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    scans (id) {
        id -> Text,
        school_id -> Text,
        reader_id -> Text,
        seq -> BigInt,
        card_uid -> Text,
        verdict -> Text,
        answer -> Nullable<Text>,
        order_id -> Nullable<Text>,
        student_id -> Nullable<Text>,
        first_scan_id -> Nullable<Text>,
        read_at -> Timestamp,
        received_at -> Timestamp,
        took_us -> Nullable<BigInt>,
        claimed_by -> Nullable<Text>,
        claimed_at -> Nullable<Timestamp>,
        attempt -> Integer,
    }
}

diesel::table! {
    orders (id) {
        id -> Text,
        school_id -> Text,
        student_id -> Text,
        placed_by -> Text,
        state -> Text,
        version -> BigInt,
        total_cents -> BigInt,
        counter_id -> Nullable<Text>,
        pickup_code -> Nullable<Text>,
        idempotency_key -> Nullable<Text>,
        request_fingerprint -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        pickup_day -> Nullable<Text>,
        window_id -> Nullable<Text>,
    }
}

diesel::table! {
    service_windows (id) {
        id -> Text,
        school_id -> Text,
        name -> Text,
        starts_at -> Text,
        ends_at -> Text,
        order_cutoff_minutes -> Integer,
        cancel_deadline_minutes -> Integer,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    order_items (order_id, line) {
        order_id -> Text,
        line -> Integer,
        meal_id -> Text,
        meal_name -> Text,
        quantity -> Integer,
        unit_price_cents -> BigInt,
    }
}

diesel::table! {
    order_events (school_id, seq) {
        school_id -> Text,
        seq -> BigInt,
        order_id -> Text,
        version -> BigInt,
        kind -> Text,
        from_state -> Nullable<Text>,
        to_state -> Text,
        actor_id -> Nullable<Text>,
        reason -> Nullable<Text>,
        snapshot -> Text,
        created_at -> Timestamp,
        notice -> Nullable<Text>,
        notice_skip -> Nullable<Text>,
    }
}

diesel::table! {
    fan_out_queue (created_at, school_id, seq) {
        created_at -> Timestamp,
        school_id -> Text,
        seq -> BigInt,
    }
}

diesel::table! {
    outbox (id) {
        id -> Text,
        school_id -> Text,
        event_seq -> BigInt,
        recipient_id -> Text,
        channel -> Text,
        template -> Text,
        address -> Text,
        locale -> Text,
        payload -> Text,
        status -> Text,
        attempts -> Integer,
        next_attempt_at -> Timestamp,
        claimed_until -> Nullable<Timestamp>,
        last_error -> Nullable<Text>,
        created_at -> Timestamp,
        sent_at -> Nullable<Timestamp>,
        priority -> Integer,
        expires_at -> Nullable<Timestamp>,
        fallback_for -> Nullable<Text>,
        dedup_key -> Nullable<Text>,
        claimed_by -> Nullable<Text>,
        resend -> Bool,
    }
}

diesel::table! {
    delivery_attempts (id) {
        id -> Text,
        outbox_id -> Text,
        attempt -> Integer,
        at -> Timestamp,
        outcome -> Text,
        detail -> Nullable<Text>,
    }
}

diesel::table! {
    device_tokens (id) {
        id -> Text,
        user_id -> Text,
        platform -> Text,
        token -> Text,
        active -> Bool,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    notification_preferences (user_id, event_kind, channel) {
        user_id -> Text,
        event_kind -> Text,
        channel -> Text,
        enabled -> Bool,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    screens (id) {
        id -> Text,
        school_id -> Text,
        name -> Text,
        kind -> Text,
        refresh_hash -> Nullable<Text>,
        previous_refresh_hash -> Nullable<Text>,
        refresh_expires_at -> Timestamp,
        paired_by -> Text,
        paired_at -> Timestamp,
        last_seen_at -> Nullable<Timestamp>,
        revoked_at -> Nullable<Timestamp>,
        station_id -> Nullable<Text>,
    }
}

diesel::table! {
    screen_pairings (id) {
        id -> Text,
        code_hash -> Text,
        secret_hash -> Text,
        expires_at -> Timestamp,
        screen_id -> Nullable<Text>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    sign_in_codes (user_id) {
        user_id -> Text,
        code_mac -> Text,
        attempts -> Integer,
        expires_at -> Timestamp,
        created_at -> Timestamp,
    }
}

diesel::table! {
    facts_epoch (id) {
        id -> Integer,
        epoch -> BigInt,
    }
}

diesel::joinable!(counters -> schools (school_id));
diesel::joinable!(meals -> schools (school_id));
diesel::joinable!(stations -> schools (school_id));
diesel::joinable!(meals -> stations (station_id));
diesel::joinable!(orders -> schools (school_id));
diesel::joinable!(order_items -> orders (order_id));
diesel::joinable!(order_events -> orders (order_id));

diesel::allow_tables_to_appear_in_same_query!(
    facts_epoch,
    fan_out_queue,
    pickup_codes,
    scans,
    delivery_attempts,
    schools,
    counters,
    users,
    guardian_links,
    refresh_tokens,
    meals,
    stations,
    rfid_cards,
    readers,
    orders,
    order_items,
    order_events,
    outbox,
    device_tokens,
    notification_preferences,
    service_windows,
    inbox_messages,
    screens,
    screen_pairings,
    sign_in_codes,
);

diesel::allow_columns_to_appear_in_same_group_by_clause!(
    orders::window_id,
    order_items::meal_id,
    order_items::meal_name,
);
