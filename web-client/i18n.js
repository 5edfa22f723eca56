// The page's own words in each language it is translated into. The page takes the first of the
// browser's languages (navigator.languages) that is here, else English. Channel names come from
// the event (each language's name in itself) and are never translated.

const STRINGS = {
  en: {
    title: 'Listen to the interpretation',
    language: 'Language',
    floorName: 'Floor (original)',
    listen: 'Listen',
    stop: 'Stop',
    volume: 'Volume',
    delay: 'Delay',
    ms: '{n} ms',
    delayUnknown: '—',
    extraDelay: 'Extra delay to match a video (ms)',
    extraDelayHint: 'Event default: {n} ms. Leave empty to use it.',
    settings: 'Settings',
    carrying: {
      interpreter: 'interpreter live',
      floor: 'original sound from the floor, no interpreter',
      relay: 'interpreter live, interpreting from {via}',
      silence: 'silent for now',
      cough: 'interpreter live, microphone off for a moment',
    },
    announce: '{name}: {state}',
    connecting: 'Connecting…',
    chooseLanguage: 'Choose a language to listen.',
    ready: 'Connected. Choose a language and press Listen.',
    listening: 'Listening to {name}.',
    stopped: 'Stopped.',
    reconnecting: 'Connection lost. Reconnecting…',
    reconnected: 'Connected again.',
    codeNeeded: 'This event needs an access code.',
    codeWrong: 'Wrong access code. Please try again.',
    codeLabel: 'Access code',
    join: 'Join',
    compat: 'compatibility mode',
    noAudio: 'This browser cannot play the sound. Try another browser.',
    refused: 'The relay refused the connection: {message}',
    unknownChannel: 'This language is no longer offered. Choose another one.',
    pausedByPhone: 'Paused by the phone. Tap to resume.',
    chooseHall: 'Hall',
    otherHalls: 'Other halls',
  },
  ru: {
    title: 'Синхронный перевод',
    language: 'Язык',
    floorName: 'Зал (оригинал)',
    listen: 'Слушать',
    stop: 'Стоп',
    volume: 'Громкость',
    delay: 'Задержка',
    ms: '{n} мс',
    delayUnknown: '—',
    extraDelay: 'Дополнительная задержка под видео (мс)',
    extraDelayHint: 'По умолчанию для мероприятия: {n} мс. Оставьте пустым, чтобы использовать её.',
    settings: 'Настройки',
    carrying: {
      interpreter: 'переводчик в эфире',
      floor: 'оригинальный звук из зала, без перевода',
      relay: 'переводчик в эфире, переводит с канала {via}',
      silence: 'сейчас тишина',
      cough: 'переводчик в эфире, микрофон ненадолго выключен',
    },
    announce: '{name}: {state}',
    connecting: 'Подключение…',
    chooseLanguage: 'Выберите язык, чтобы слушать.',
    ready: 'Подключено. Выберите язык и нажмите «Слушать».',
    listening: 'Вы слушаете: {name}.',
    stopped: 'Остановлено.',
    reconnecting: 'Связь потеряна. Переподключение…',
    reconnected: 'Связь восстановлена.',
    codeNeeded: 'Для этого мероприятия нужен код доступа.',
    codeWrong: 'Неверный код доступа. Попробуйте ещё раз.',
    codeLabel: 'Код доступа',
    join: 'Войти',
    compat: 'режим совместимости',
    noAudio: 'Этот браузер не может воспроизвести звук. Попробуйте другой браузер.',
    refused: 'Сервер отказал в подключении: {message}',
    unknownChannel: 'Этот язык больше не транслируется. Выберите другой.',
    pausedByPhone: 'Звук остановлен телефоном. Нажмите, чтобы продолжить.',
    chooseHall: 'Зал',
    otherHalls: 'Другие залы',
  },
};

export function pickLanguage(preferred = navigator.languages || [navigator.language]) {
  for (const tag of preferred) {
    const base = String(tag).toLowerCase().split('-')[0];
    if (STRINGS[base]) return base;
  }
  return 'en';
}

export function translator(lang) {
  const table = STRINGS[lang] || STRINGS.en;
  return (key, vars = {}) => {
    let s = key.split('.').reduce((o, k) => (o ? o[k] : undefined), table);
    if (s === undefined) s = key.split('.').reduce((o, k) => (o ? o[k] : undefined), STRINGS.en) ?? key;
    return s.replace(/\{(\w+)\}/g, (_, k) => (k in vars ? String(vars[k]) : ''));
  };
}
